"""Loops in generated tokens: where an output starts repeating a cycle, and how much of it does.

A small target decoding greedily often falls into a loop (`self._w, self._w, self._w, ...`),
which a drafter predicts block after block: a speedup measured on loops is not one on real text.

Definition. A cycle of period p (1 <= p <= MAX_PERIOD) is a stretch tokens[start:end] in which
tokens[t] == tokens[t - p] for every t in start + p .. end - 1, where that run of matches is at
least max(2 * p, MIN_RUN) long: the stretch is the p-token pattern at least three times in a row
(the last time possibly cut short), and the matches span at least MIN_RUN tokens, so that a token
pair or a line that recurs two or three times in ordinary code is not a loop. The stretch starts
where the periodicity starts, which can be inside the first occurrence of the line or phrase
that repeats. A stretch periodic with p is also periodic with 2p, 3p, ...; its tokens count once.

- cycle share: the tokens inside any cycle (the union of the stretches, over every period) over
  all tokens;
- first cycle: the position where the earliest stretch starts, the first token from which the
  output repeats itself; None when there is no cycle.

Only exact repetition counts: a loop whose lines differ by a counter (`x1 = 0`, `x2 = 0`, ...) or a
pattern longer than MAX_PERIOD tokens is not a cycle here. O(len(tokens) * MAX_PERIOD).
"""

import statistics
from typing import List, Sequence, Tuple

MAX_PERIOD = 64
MIN_RUN = 16


def cycle_spans(tokens: Sequence[int]) -> List[Tuple[int, int]]:
    """The tokens inside cycles as sorted, disjoint (start, end) spans."""
    stretches = []
    for period in range(1, min(MAX_PERIOD, len(tokens) // 3) + 1):
        shortest_run = max(2 * period, MIN_RUN)
        run_start = period
        for t in range(period, len(tokens) + 1):
            if t < len(tokens) and tokens[t] == tokens[t - period]:
                continue
            if t - run_start >= shortest_run:
                stretches.append((run_start - period, t))
            run_start = t + 1
    spans = []
    for start, end in sorted(stretches):
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def loop_figures(outputs: List[Sequence[int]]) -> dict:
    """Loops over several outputs (one per prompt): the share of all their tokens inside cycles,
    how many outputs have a cycle, and the median of those outputs' first cycle positions."""
    spans = [cycle_spans(tokens) for tokens in outputs]
    total = sum(len(tokens) for tokens in outputs)
    inside = sum(end - start for output_spans in spans for start, end in output_spans)
    first_cycles = [output_spans[0][0] for output_spans in spans if output_spans]
    return {
        "cycle_share": inside / total if total else None,
        "prompts_looping": len(first_cycles),
        "first_cycle_median": statistics.median(first_cycles) if first_cycles else None,
    }
