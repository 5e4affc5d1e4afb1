"""The engine: models loaded once, requests answered with results, nothing printed.

A request goes to the expert (the target with its DFlash drafter) or to the fast model alone,
as the request says or, with route "auto", as the router decides. Models are loaded the first
time a route needs them. The CLI, the benchmarks and the server are thin layers over this.
"""

from dataclasses import dataclass, field, replace
from typing import Iterator, Optional, Tuple, Union

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

from .acceptance import make_acceptance
from .generate import GenerationResponse, GenerationResult, plain_generate, stream_generate, stream_plain
from .loading import DFlashModel, load
from .presets import CHECKPOINTS, DEFAULT_DRAFT, DEFAULT_FAST, DEFAULT_ROUTER_PROBE, DEFAULT_TARGET, PRESETS, Preset
from .sampling import SamplingSettings

ROUTE_CHOICES = ("auto", FAST, EXPERT)
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class Request:
    prompt: Union[str, list]  # text, or token ids (no chat template then)
    max_tokens: int = 256
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    acceptance: str = "speculative"  # the rule at temperature > 0: speculative, match or argmax
    seed: Optional[int] = None
    block_size: Union[int, str, None] = None  # default: the drafter's; "auto": chosen every step
    draft_window: Optional[int] = None  # the drafter sees this many last committed positions; None: all
    chat: bool = True
    thinking: Optional[bool] = None  # the chat template's thinking switch; None: the family's default
    route: str = EXPERT  # expert, fast or auto


def resolve_pair(target: Optional[str], draft: Optional[str], preset: Optional[str]) -> Preset:
    """The target and drafter a user asked for: a preset, both paths, or neither for the shipped pair."""
    if preset and (target or draft):
        raise DFlashError("give either --preset or --target-model/--draft-model, not both")
    if preset:
        if preset not in PRESETS:
            raise DFlashError(f"unknown preset '{preset}'; choose one of {', '.join(sorted(PRESETS))}")
        return PRESETS[preset]
    if bool(target) != bool(draft):
        raise DFlashError("give both --target-model and --draft-model (or neither, for the shipped offline pair)")
    if target:
        return Preset(target, draft)
    if not (DEFAULT_TARGET.is_dir() and DEFAULT_DRAFT.is_dir()):
        raise DFlashError(
            f"the offline default pair is not in {CHECKPOINTS} (it is built by train/, see the README); "
            "pass --target-model and --draft-model, or --preset"
        )
    return Preset(str(DEFAULT_TARGET), str(DEFAULT_DRAFT))


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
    ):
        check_threshold(route_threshold)
        self.pair = resolve_pair(target, draft, preset)
        self.target_path, self.draft_path = self.pair.target, self.pair.draft
        self.fast_path, self.router_kind, self.router_probe = fast_model, router, router_probe
        self.route_threshold, self.dtype = route_threshold, dtype
        self.dequantize, self.draft_bits = dequantize, draft_bits
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
        if request.route not in ROUTE_CHOICES:
            raise DFlashError(f"unknown route '{request.route}'; choose one of {', '.join(ROUTE_CHOICES)}")
        if isinstance(request.prompt, str):
            check_prompt(request.prompt)
        if request.route != "auto":
            return RouteDecision(request.route, "chosen with --route", "request")
        if not isinstance(request.prompt, str):
            raise DFlashError("the router reads text: give the prompt as text to route it")
        return self.router.route(request.prompt)

    def stream(self, request: Request, route: str) -> Iterator[GenerationResponse]:
        """Generate on `route` (FAST or EXPERT), one response per step."""
        if route == FAST:
            fast = self.fast
            return stream_plain(fast.adapter, fast.tokenizer, request.prompt, request.max_tokens, chat=request.chat,
                                thinking=request.thinking, sampling=request.sampling, seed=request.seed)  # fmt: skip
        model, tokenizer = self.expert
        return stream_generate(
            model, tokenizer, request.prompt, request.max_tokens, block_size=request.block_size or self.pair.block_size,
            chat=request.chat, thinking=request.thinking, acceptance=make_acceptance(request.sampling, request.acceptance),
            seed=request.seed, draft_window=request.draft_window,
        )  # fmt: skip

    def baseline(self, request: Request) -> GenerationResult:
        """Plain mlx-lm decoding of the expert's target with the request's settings."""
        model, tokenizer = self.expert
        return plain_generate(model.adapter, tokenizer, request.prompt, request.max_tokens, chat=request.chat,
                              thinking=request.thinking,
                              sampling=request.sampling, seed=request.seed)  # fmt: skip

    def warm_up(self, request: Request) -> None:
        """A few tokens by DFlash and by plain decoding, so that neither pays first-call costs in a timing."""
        short = replace(request, max_tokens=WARMUP_TOKENS)
        for _ in self.stream(short, EXPERT):
            pass
        self.baseline(short)
