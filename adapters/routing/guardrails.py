"""Guardrails: deterministic rules that send code, debugging, math and multi-step reasoning to the
expert, and abstain on everything else."""

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .decision import EXPERT, RouteDecision, check_prompt


@dataclass(frozen=True)
class Rule:
    """Fires when `pattern` matches and every pattern in `also` matches somewhere in the prompt."""

    category: str  # code, debugging, math, multi-step
    name: str
    pattern: re.Pattern
    also: Tuple[re.Pattern, ...] = ()

    def match(self, prompt: str) -> Optional[str]:
        found = self.pattern.search(prompt)
        if found and all(p.search(prompt) for p in self.also):
            return found.group(0)
        return None


def words(*alternatives: str, flags: int = re.IGNORECASE) -> re.Pattern:
    """A pattern for any of `alternatives` (regexes) as whole words."""
    return re.compile(r"(?<![\w])(?:" + "|".join(alternatives) + r")(?![\w])", flags)


def pattern(regex: str, flags: int = re.IGNORECASE) -> re.Pattern:
    return re.compile(regex, flags | re.MULTILINE)


# Names that are also ordinary words (the snake, the island, the metal, the animal...) count as
# a programming language only in a prompt that also has a word about programs.
AMBIGUOUS_LANGUAGES = words(r"python|java|rust|ruby|swift|julia|lua|dart|elixir|scala|perl|pandas|django")
SHORT_LANGUAGES = pattern(
    r"\b(in|using|with|learn|learning)\s+(Go|C|R)\b"
    r"|\b(Go|C|R) (program|code|function|script|package|module|compiler|library)s?\b",
    0,
)
PROGRAMMING_CONTEXT = words(
    r"code|coding|functions?|scripts?|program(s|ming)?|librar(y|ies)|packages?|modules?|compilers?|syntax|"
    r"variables?|loops?|arrays?|list comprehensions?|dict(ionar(y|ies))?|dataframes?|exceptions?|errors?|bugs?|"
    r"debug\w*|implement\w*|methods?|class(es)?|snippets?|apis?|frameworks?|interpreter|strings?|integers?|"
    r"structs?|async|threads?|imports?|terminal|ide|tuples?|generators?|keywords?"
)
NUMBER = r"-?\d+(?:[.,]\d+)?"

# fmt: off
RULES: List[Rule] = [
    # --- code
    Rule("code", "code block", pattern(r"```|~~~")),
    Rule("code", "function definition", pattern(r"\b(def|fn|func|function)\s+[A-Za-z_]\w*\s*\(", 0)),
    Rule("code", "class definition", pattern(r"\bclass\s+[A-Z]\w*\s*(\(|:|\{|extends\b|implements\b)", 0)),
    Rule("code", "import statement", pattern(r"^\s*(from\s+[\w.]+\s+)?import\s+[\w.*]+(\s+as\s+\w+)?\s*;?\s*$", 0)),
    Rule("code", "include directive", pattern(r"#include\s*[<\"]")),
    Rule("code", "method call", pattern(r"\b[A-Za-z_]\w*\.[A-Za-z_]\w*\([^()\n]*\)", 0)),
    Rule("code", "snake_case call", pattern(r"\b[a-z]+_[a-z_0-9]*\(")),
    Rule("code", "code operator", pattern(r"===|!==|!=|==|=>|&&|\|\||\+=|::")),
    Rule("code", "braces with statements", pattern(r"\{[^{}\n]*;[^{}]*\}")),
    Rule("code", "HTML tag", pattern(
        r"</?(html|head|body|div|span|script|style|ul|ol|li|table|tr|td|button|input|form|a|p|img)\b[^<>]*>"
    )),
    Rule("code", "SQL", pattern(r"\bselect\s+(\*|distinct\b|count\s*\(|\w+\s*,\s*\w+)[^;]*?\bfrom\s+\w+")),
    Rule("code", "complexity", pattern(r"\bO\((1|n|log n|n log n|n\^?2|n²|2\^n)\)", 0)),
    Rule("code", "shell command", pattern(
        r"^\s*\$\s+\w+|\b(sudo|apt-get|brew install|pip3? install|npm (install|run|i)|yarn add|chmod|chown|grep|awk|"
        r"kubectl|docker(file| run| build| compose)?|"
        r"git (commit|push|pull|rebase|merge|clone|checkout|stash|branch|reset|diff))\b"
        r"|\bsed\s+(-|['\"]s/)|\bcurl\s+(-|https?://)|\bbash\s+(script|command|shell|loop|one-liner|function|alias)s?\b"
        r"|\bin bash\b"
    )),
    Rule("code", "programming language", words(
        r"javascript|typescript|c\+\+|c#|golang|kotlin|php|haskell|matlab|numpy|pytorch|tensorflow|node\.?js|"
        r"react(\.?js)?\s+(component|hook|app)s?|jquery|css|html|sql|mysql|postgres(ql)?|sqlite|regex(es)?|"
        r"regular expressions?|json|yaml|xml|powershell|shell scripts?|kubernetes|webassembly|cuda|"
        r"assembly language|verilog|fortran|cobol"
    )),
    Rule("code", "programming language", AMBIGUOUS_LANGUAGES, (PROGRAMMING_CONTEXT,)),
    Rule("code", "programming language", SHORT_LANGUAGES, (PROGRAMMING_CONTEXT,)),
    Rule("code", "programming term", words(
        r"source code|my code|this code|the following code|code (snippet|review|block|base|sample)s?|codebase|"
        r"coding|programming|programmer|unit tests?|pull request|refactor\w*|debug\w*|compilers?|linked lists?|"
        r"binary (search )?trees?|hash ?(maps?|tables?)|big[- ]o notation|time complexity|space complexity|"
        r"recursion|recursive(ly)?|algorithms?|data structures?|dataframes?|api|apis|endpoints?|backend|frontend|"
        r"repository|github|gitlab|stack ?overflow|type hints?|lambdas?|asyncio|async|mutex|race conditions?|"
        r"deadlocks?|memory leaks?|garbage collect\w*|null pointers?|off[- ]by[- ]one|multithread\w*|concurrency|"
        r"list comprehensions?|stacks? using|queues?|trie|"
        r"(quick|merge|heap|bubble|insertion|selection|radix) ?sort|binary search|http requests?|home directory|"
        r"command line|log files?|cron( job)?s?|crontab|memory usage|graphql|rest api|microservices?|monolith|md5|"
        r"sha-?\d+|password hashing|(dict|dictionary|map|hashmap) by (its )?(values?|keys?)|"
        r"(program|script|function|tool) that (reads|parses|prints|counts|returns|takes|converts|computes|outputs|"
        r"writes|downloads|scrapes|checks|validates|renames|backs up|sorts)|"
        r"(write|implement|code)\s+(a|an|the|this|my|some)?\s*(\w+\s+){0,2}"
        r"(function|method|program|regex|algorithm|endpoint|parser)"
    )),
    # --- debugging
    Rule("debugging", "stack trace", pattern(
        r"Traceback \(most recent call last\)|^\s*File \"[^\"]+\", line \d+|^\s+at [\w.$<>]+\(.*\)\s*$"
        r"|panicked at|core dumped|npm ERR!|\berror(\[E\d+\])?:\s|\berrno\b|exit (code|status) \d+"
    )),
    Rule("debugging", "exception name", pattern(r"\b[A-Z]\w*(Error|Exception)\b", 0)),
    Rule("debugging", "error value", pattern(r"\breturns? (None|null|undefined|NaN|nil)\b", 0)),
    Rule("debugging", "error message", words(
        r"(type|value|key|index|attribute|name|syntax|import|runtime|reference|zero ?division|assertion|recursion|"
        r"overflow|compile|compilation|linker|build|segmentation|memory|null ?pointer|out of (memory|range|bounds))"
        r"\s*(errors?|exceptions?|faults?)|stack ?traces?|segfaults?|undefined is not a function|"
        r"cannot read propert(y|ies) of (undefined|null)|command not found|"
        r"(throws?|threw|raises?|raised|thrown)\s+(an?\s+)?\w*\s*(exception|error)|infinite loop|"
        r"status code \d{3}|\d{3} (internal server )?error"
    )),
    # --- math
    Rule("math", "arithmetic", pattern(
        rf"{NUMBER}\s*[+*×÷^]\s*\(?{NUMBER}|\d\s*\*\*\s*\d|{NUMBER}\s*[-/]\s*{NUMBER}\s*="
    )),
    Rule("math", "equation", pattern(
        r"\b[a-z0-9]\^[a-z0-9(]|\b\d*[a-z]\s*(\^|\*\*)\s*\d|\b\d+[xyznt]\b\s*[-+*/]\s*\w"
        r"|[a-z0-9)]\s*=\s*(-?[a-z0-9(]|\?)|\b[a-z]\([a-z]\)\s*="
        r"|\b(sin|cos|tan|log|ln|exp|sqrt)\(|[√∫∑∏∂∆≤≥≠]|\\(frac|sqrt|int|sum|cdot|times|alpha|beta|theta|pi|infty)\b"
    )),
    Rule("math", "math request", words(
        r"calculate|calculating|compute|computing|factori[sz]e|"
        r"simplify\s+(\S*\d|[a-z]\s*[-+*/^]|the (expression|fraction|equation))|"
        r"solve\s+(for\s+\w|\d|[a-z]\s*[=+^]|"
        r"(the|this|these|following)\s+(\w+\s+)?(equations?|system|inequalit(y|ies)|problem|riddle|puzzle))|"
        rf"what('s|\s+is)\s+{NUMBER}\s*([-+*/x×÷^]|plus|minus|times|divided by|to the power|squared|cubed)|"
        rf"{NUMBER}\s*(%|percent)\s+of\s+\$?{NUMBER}|"
        r"equations?|inequalit(y|ies)|integrals?|derivatives? of|differentiate\s+(\w+\s*[\^(=]|with respect)|"
        r"antiderivative|limit of .* as \w+ (approaches|tends|->|→)|polynomials?|quadratic|logarithms?|"
        r"log base \d+|factorials?|matri(x|ces) (multiplication|inverse|product)|matrices|determinant|eigen\w*|"
        r"theorem|lemma|prove that|proof (that|by)|probability|expected value|variance|standard deviation|"
        r"permutations?|how many (ways|combinations|permutations)|binomial|modulo|mod \d+|gcd|lcm|"
        r"greatest common (divisor|factor)|least common multiple|prime factori[sz]ation|prime factors|square root|"
        r"cube root|hypotenuse|perimeter|"
        r"(area|volume|circumference) of (a|an|the)\s+(\w+\s+)?"
        r"(circle|triangle|rectangle|square|sphere|cylinder|cone|cube)|"
        r"compound interest|arithmetic|math (problem|homework|question)s?|word problem|show (that|why)|"
        r"is \d+ (a )?prime|sum of (the )?(first|all|digits|squares|series)|"
        r"(positive|negative|odd|even|whole) (integers|numbers)|integers|to (a )?(fraction|decimal|percentage)|"
        r"lowest terms|(mean|median|mode|average) of (\d|the numbers|these numbers)|median|angle between|"
        r"(twice|three times|half) as (old|many|much|fast|long)|integrate .* d[a-z]|what (day|date|time) will it be"
    )),
    Rule("math", "word problem",
         words(r"how (many|much|long|far|fast|old)|what is the (total|average|sum|product|difference|ratio)"),
         (pattern(rf"{NUMBER}\D+{NUMBER}"),
          words(
              r"each|per|total|altogether|in all|remain(s|ing)?|left|average|twice|half|times (as|more)|rate|"
              r"speed|mph|km/h|km|miles|meters?|liters?|servings?|discount|price|doubles?|every"
          ))),
    Rule("math", "word problem", pattern(r"\?"), (pattern(rf"{NUMBER}\D+{NUMBER}\D+{NUMBER}"),
         words(r"how (many|much|long|far|fast|old)|when|which|what (is|was|will)|find"))),
    # --- multi-step reasoning and analysis
    Rule("multi-step", "step by step", words(
        r"step[\s-]*by[\s-]*step|(show|explain) (your|all|the) (work|steps|reasoning)|"
        r"explain your (answer|reasoning)|justify your answer|think (it |this )?through|think carefully|"
        r"reason (about|through)|walk me through|chain[- ]of[- ]thought|one step at a time|reason (it )?out|"
        r"explain carefully|minimum number of|maximum number of|minimi[sz]e|if all \w+ are|flaw in|fallac(y|ies)|"
        r"time zones?|what time is (it|that) in"
    )),
    Rule("multi-step", "analysis", words(
        r"analy[sz]e|analy[sz]ing|analysis|compare and contrast|trade[- ]?offs?|pros and cons|"
        r"detailed (plan|analysis|explanation|comparison|breakdown)|root cause|"
        r"design (a|an|the) (system|architecture|database|schema|protocol|experiment|algorithm)|system design|"
        r"evaluate (the|this|whether|how)|derive|derivation|assess\w*|critically|implications?|consequences|weigh|"
        r"objections?|mechanisms?|(economic|environmental|social) (effects?|impact)|strengths and weaknesses|"
        r"for and against|compare|comparison|contrast"
    )),
    Rule("multi-step", "puzzle", words(
        r"logic puzzles?|brain ?teasers?|who is (lying|telling the truth)|knights and knaves"
    )),
]
# fmt: on


class Guardrails:
    """Deterministic rules: a match sends the prompt to the expert; no match abstains."""

    name = "guardrails"

    def __init__(self, rules: Sequence[Rule] = RULES):
        self.rules = rules

    def decide(self, prompt: str) -> Optional[RouteDecision]:
        check_prompt(prompt)
        for rule in self.rules:
            matched = rule.match(prompt)
            if matched is not None:
                excerpt = " ".join(matched.split())[:40]
                return RouteDecision(EXPERT, f"guardrail: {rule.category} ({rule.name}: '{excerpt}')", self.name)
        return None
