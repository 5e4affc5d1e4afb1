"""The router: send each prompt to the fast model alone or to the expert (the big target with its
DFlash drafter), with a human-readable reason.

Policies stack in a `Router`: the first policy that decides wins. `Guardrails` go first: they
only ever say "expert" (code, debugging, math, multi-step reasoning) and abstain otherwise, so
they override the scoring policy after them:

- `ProbePolicy`: a logistic-regression probe on the fast model's pooled hidden states, trained
  with `dflash-train-router`; works for any model the adapters support.
- `LLMJudge`: an instruction-tuned fast model's next-token probabilities of the two labels of a
  classification prompt (no free text).

Scoring policies send a prompt to the expert when P(expert) >= threshold. The default threshold
is below one half: when in doubt, expert.
"""

import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn

from .errors import DFlashError
from .loading import load_target

from . import DecoderAdapter, adapter_for

FAST, EXPERT = "fast", "expert"
ROUTES = (FAST, EXPERT)
ROUTERS = ("probe", "judge", "guardrails")  # what stacks under the guardrails
DEFAULT_THRESHOLD = 0.3  # P(expert) at or above which a scoring policy picks the expert
PROBE_FORMAT = "dflash-router-probe"
PROBE_MAX_TOKENS = 512  # the probe reads the first tokens of a long prompt
# A probe keeps the features of this prompt on the model it was trained on: another model of the
# same shape (a retrained fast model) gives different ones. The tolerance allows for dtypes.
CANARY_PROMPT = "The router probe checks that it reads the hidden states of the model it was trained on."
CANARY_TOLERANCE = 0.05  # relative L2 distance
JUDGE_MAX_CHARS = 2000  # and the judge the first characters


@dataclass(frozen=True)
class RouteDecision:
    route: str  # FAST or EXPERT
    reason: str
    policy: str  # the policy that decided, or "fallback"
    expert_probability: Optional[float] = None  # scoring policies only
    latency_s: float = 0.0  # filled in by Router.route


def check_prompt(prompt) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise DFlashError("the prompt is empty")


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise DFlashError(f"the routing threshold is a probability between 0 and 1, got {threshold}")


# ---------------------------------------------------------------------------------------------
# Guardrails


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


# ---------------------------------------------------------------------------------------------
# Scoring policies


class ScoringPolicy:
    """Scores P(expert) for a prompt and always decides."""

    name = "scorer"

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        check_threshold(threshold)
        self.threshold = threshold

    def expert_probability(self, prompt: str) -> float:
        raise NotImplementedError

    def decide(self, prompt: str) -> RouteDecision:
        check_prompt(prompt)
        p = self.expert_probability(prompt)
        route, comparison = (EXPERT, ">=") if p >= self.threshold else (FAST, "<")
        reason = f"{self.name}: P(expert) {p:.2f} {comparison} threshold {self.threshold:.2f}"
        return RouteDecision(route, reason, self.name, expert_probability=p)


@dataclass
class FastModel:
    """The small model: it answers fast-route prompts and powers the probe or the judge."""

    model: nn.Module
    tokenizer: object  # mlx-lm TokenizerWrapper
    adapter: DecoderAdapter
    path: str

    @property
    def dtype(self) -> str:
        return self.adapter.dtype


def load_fast_model(path: str, dtype: Optional[str] = "auto") -> FastModel:
    """Load an mlx-lm checkpoint as the fast model; dtype as in `dflash.load`."""
    model, tokenizer = load_target(path, dtype, what="fast model")
    adapter = adapter_for(model)
    # mlx-lm's generation stops at the tokenizer's EOS ids: add the family's end-of-turn tokens,
    # which the DFlash loop stops at too.
    tokenizer.eos_token_ids = adapter.stop_tokens(tokenizer)
    return FastModel(model, tokenizer, adapter, str(path))


def pooled_features(fast: FastModel, prompt: str, layer_ids: Sequence[int]) -> mx.array:
    """The mean over the prompt's positions of [final normed hidden states ; layers `layer_ids`]:
    a float32 vector of (1 + len(layer_ids)) * hidden_size features."""
    tokens = fast.tokenizer.encode(prompt)[:PROBE_MAX_TOKENS]
    verified = fast.adapter.verify(mx.array(tokens)[None], fast.adapter.make_cache(), layer_ids)
    return mx.concatenate([verified.hidden, verified.taps], axis=-1)[0].astype(mx.float32).mean(axis=0)


@dataclass
class Probe:
    """Logistic regression on standardised pooled features of one fast model."""

    weight: mx.array  # [F]
    bias: mx.array  # [1]
    feature_mean: mx.array  # [F]
    feature_std: mx.array  # [F]
    canary_features: mx.array  # [F] pooled features of CANARY_PROMPT on the model trained on
    layer_ids: List[int]
    hidden_size: int
    num_layers: int
    vocab_size: int

    @property
    def num_features(self) -> int:
        return (1 + len(self.layer_ids)) * self.hidden_size

    def logits(self, features: mx.array) -> mx.array:
        """Logit of P(expert) for features [..., F]."""
        return ((features - self.feature_mean) / self.feature_std) @ self.weight + self.bias[0]

    def check_fits(self, fast: FastModel) -> None:
        adapter = fast.adapter
        if self.hidden_size != adapter.hidden_size:
            raise DFlashError(
                f"the router probe was trained for a model of hidden size {self.hidden_size}; "
                f"the fast model's is {adapter.hidden_size} (train one for it with dflash-train-router)"
            )
        if (self.num_layers, self.vocab_size) != (adapter.num_layers, adapter.vocab_size):
            raise DFlashError(
                f"the router probe was trained for a model of {self.num_layers} layers and {self.vocab_size} "
                f"tokens; the fast model has {adapter.num_layers} and {adapter.vocab_size} "
                "(train one for it with dflash-train-router)"
            )
        canary = pooled_features(fast, CANARY_PROMPT, self.layer_ids)
        drift = (mx.linalg.norm(canary - self.canary_features) / mx.linalg.norm(self.canary_features)).item()
        if not drift <= CANARY_TOLERANCE:
            raise DFlashError(
                f"the router probe was trained on another model: the fast model's hidden states on a reference "
                f"prompt differ by {drift:.0%} (train one for it with dflash-train-router)"
            )

    def save(self, path) -> None:
        """One safetensors file; the configuration rides in its metadata."""
        metadata = {
            "format": PROBE_FORMAT,
            "layer_ids": json.dumps(self.layer_ids),
            "hidden_size": str(self.hidden_size),
            "num_layers": str(self.num_layers),
            "vocab_size": str(self.vocab_size),
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tensors = dict(
            weight=self.weight,
            bias=self.bias,
            feature_mean=self.feature_mean,
            feature_std=self.feature_std,
            canary_features=self.canary_features,
        )
        mx.save_safetensors(str(path), tensors, metadata=metadata)


def load_probe(path) -> Probe:
    path = Path(path)
    if not path.is_file():
        raise DFlashError(
            f"router probe '{path}' not found (train one with dflash-train-router, or use --router guardrails)"
        )
    try:
        tensors, metadata = mx.load(str(path), return_metadata=True)
    except Exception as e:
        raise DFlashError(f"cannot read router probe {path}: {type(e).__name__}: {e}") from None
    if metadata.get("format") != PROBE_FORMAT:
        raise DFlashError(f"{path} is not a router probe (no '{PROBE_FORMAT}' format tag in its metadata)")
    try:
        probe = Probe(
            weight=tensors["weight"],
            bias=tensors["bias"],
            feature_mean=tensors["feature_mean"],
            feature_std=tensors["feature_std"],
            canary_features=tensors["canary_features"],
            layer_ids=[int(i) for i in json.loads(metadata["layer_ids"])],
            hidden_size=int(metadata["hidden_size"]),
            num_layers=int(metadata["num_layers"]),
            vocab_size=int(metadata["vocab_size"]),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise DFlashError(f"router probe {path} is incomplete or corrupt: {type(e).__name__}: {e}") from None
    vectors = (probe.weight, probe.feature_mean, probe.feature_std, probe.canary_features)
    if any(v.shape != (probe.num_features,) for v in vectors) or probe.bias.shape != (1,):
        raise DFlashError(f"router probe {path} has tensors of the wrong shape for its metadata")
    return probe


class ProbePolicy(ScoringPolicy):
    name = "probe"

    def __init__(self, probe: Probe, fast: FastModel, threshold: float = DEFAULT_THRESHOLD):
        super().__init__(threshold)
        probe.check_fits(fast)
        self.probe, self.fast = probe, fast

    def expert_probability(self, prompt: str) -> float:
        features = pooled_features(self.fast, prompt, self.probe.layer_ids)
        return mx.sigmoid(self.probe.logits(features)).item()


JUDGE_LABELS = {FAST: "simple", EXPERT: "complex"}
JUDGE_PROMPT = (
    "Decide which assistant should answer the request below.\n"
    'Answer "simple" for greetings, small talk, simple facts, rewriting or translating a given text, '
    "short advice or light creative writing.\n"
    'Answer "complex" for programming, debugging, math, multi-step reasoning, puzzles or in-depth analysis.\n\n'
    'Request:\n"""\n{prompt}\n"""\n\nAnswer with one word: simple or complex.'
)


class LLMJudge(ScoringPolicy):
    """An instruction-tuned model classifies the prompt; P(expert) is the share of the next-token
    probability that goes to "complex" rather than "simple" (in their usual spellings)."""

    name = "judge"

    def __init__(self, fast: FastModel, threshold: float = DEFAULT_THRESHOLD):
        super().__init__(threshold)
        self.fast = fast
        self.label_tokens = {route: self.first_tokens(word) for route, word in JUDGE_LABELS.items()}
        # A token both labels start with (a lone space, a single letter) tells them apart from nothing.
        shared = self.label_tokens[FAST] & self.label_tokens[EXPERT]
        self.label_tokens = {route: sorted(ids - shared) for route, ids in self.label_tokens.items()}
        if not all(self.label_tokens.values()):
            raise DFlashError(
                "the judge's tokenizer cannot tell the labels 'simple' and 'complex' apart by their first token"
            )

    def first_tokens(self, word: str) -> set:
        variants = (word, word.capitalize(), " " + word, " " + word.capitalize())
        return {ids[0] for ids in (self.fast.tokenizer.encode(v, add_special_tokens=False) for v in variants) if ids}

    def judge_tokens(self, prompt: str) -> List[int]:
        request = JUDGE_PROMPT.format(prompt=prompt[:JUDGE_MAX_CHARS])
        tokenizer = self.fast.tokenizer
        if getattr(tokenizer, "chat_template", None) is None:
            return tokenizer.encode(request + "\nAnswer:")
        return tokenizer.encode(self.fast.adapter.apply_chat_template(tokenizer, request), add_special_tokens=False)

    def expert_probability(self, prompt: str) -> float:
        logits = self.fast.model(mx.array(self.judge_tokens(prompt))[None])[0, -1].astype(mx.float32)
        probabilities = mx.softmax(logits)
        fast_mass = probabilities[mx.array(self.label_tokens[FAST])].sum()
        expert_mass = probabilities[mx.array(self.label_tokens[EXPERT])].sum()
        return (expert_mass / (fast_mass + expert_mass)).item()


# ---------------------------------------------------------------------------------------------
# Stacking


class Router:
    """Asks its policies in order; the first that decides wins. When every policy abstains the
    prompt goes to `fallback`."""

    def __init__(self, policies: Sequence, fallback: str = EXPERT):
        if not policies:
            raise DFlashError("a router needs at least one policy")
        if fallback not in ROUTES:
            raise DFlashError(f"unknown route '{fallback}'; choose one of {', '.join(ROUTES)}")
        self.policies, self.fallback = list(policies), fallback

    def route(self, prompt: str) -> RouteDecision:
        check_prompt(prompt)
        tic = time.perf_counter()
        decision = None
        for policy in self.policies:
            decision = policy.decide(prompt)
            if decision is not None:
                break
        if decision is None:
            names = " and ".join(p.name for p in self.policies)
            decision = RouteDecision(self.fallback, f"{names} found nothing that needs the expert", "fallback")
        return replace(decision, latency_s=time.perf_counter() - tic)


def make_router(
    kind: str, fast: Optional[FastModel] = None, probe_path=None, threshold: float = DEFAULT_THRESHOLD
) -> Router:
    """Guardrails stacked over a probe or a judge, or guardrails alone (whose fallback is fast:
    with no scoring policy, a prompt no rule flags goes to the fast model)."""
    if kind == "guardrails":
        return Router([Guardrails()], fallback=FAST)
    if fast is None:
        raise DFlashError(f"the {kind} router needs the fast model")
    if kind == "judge":
        return Router([Guardrails(), LLMJudge(fast, threshold)])
    if kind == "probe":
        return Router([Guardrails(), ProbePolicy(load_probe(probe_path), fast, threshold)])
    raise DFlashError(f"unknown router '{kind}'; choose one of {', '.join(ROUTERS)}")


# ---------------------------------------------------------------------------------------------
# Labeled prompts (training and evaluation)


@dataclass(frozen=True)
class LabeledPrompt:
    prompt: str
    label: str  # FAST or EXPERT
    category: Optional[str] = None


def read_labeled_prompts(path) -> List[LabeledPrompt]:
    """A JSONL file of {"prompt": ..., "label": "fast" | "expert", "category": optional}."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DFlashError(f"cannot read labeled prompts {path}: {type(e).__name__}: {e}") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example = LabeledPrompt(row["prompt"], row["label"], row.get("category"))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise DFlashError(
                f'{path}:{number}: expected {{"prompt": ..., "label": ...}}: {type(e).__name__}: {e}'
            ) from None
        if example.label not in ROUTES:
            raise DFlashError(f"{path}:{number}: label '{example.label}' is not one of {', '.join(ROUTES)}")
        if not isinstance(example.prompt, str) or not example.prompt.strip():
            raise DFlashError(f"{path}:{number}: the prompt is empty")
        examples.append(example)
    if not examples:
        raise DFlashError(f"{path} has no labeled prompts")
    return examples
