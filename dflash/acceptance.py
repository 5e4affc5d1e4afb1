"""Acceptance rules: how draft proposals are made from the drafter's logits and which of them
the target's logits accept. The decode loop calls only these three methods, so a rule for
sampling at temperature > 0 plugs in beside the greedy one."""

from typing import List

import mlx.core as mx


class GreedyAcceptance:
    """Temperature 0: propose the drafter's argmax, accept the longest prefix that equals the
    target's argmax, then commit the target's own token. Output equals plain greedy decoding."""

    def first_token(self, target_logits: mx.array) -> int:
        """The token after the prompt, from the target's logits at its last position [V]."""
        return mx.argmax(target_logits, axis=-1).item()

    def propose(self, draft_logits: mx.array) -> mx.array:
        """Proposals [n] from the drafter's logits at block positions 1..n [n, V]."""
        return mx.argmax(draft_logits, axis=-1)

    def accept(self, proposals: mx.array, draft_logits: mx.array, target_logits: mx.array) -> List[int]:
        """Committed tokens: the accepted proposals plus one target token.

        target_logits [n + 1, V] are the target's logits at [last committed, proposal_1..n].
        """
        target_tokens = mx.argmax(target_logits, axis=-1).tolist()
        proposed = proposals.tolist()
        n = 0
        while n < len(proposed) and proposed[n] == target_tokens[n]:
            n += 1
        return proposed[:n] + [target_tokens[n]]
