"""dflash-train: train a DFlash drafter for a target model.

Three steps, each resumable (rerun the same command after an interruption):

  1. Regenerate responses with the target (prompts from a hub dataset or local files):

       dflash-train regenerate --target TARGET --prompts PROMPTS --out data/my-target

     PROMPTS is a Hugging Face dataset id (--split, default train) or a local .jsonl / .json /
     .parquet / .txt file or directory of them. The prompt column is found by name
     (messages, conversations, prompt, instruction, question, input, text; conversations give
     their first user turn) or named with --prompt-field. Prompts are formatted with the
     target's chat template (--no-chat for raw text) and answered greedily, or sampled with
     --temperature / --top-p, --batch-size at a time. Answers are appended to
     OUT/responses.jsonl as they finish: a rerun skips the prompts already answered.

  2. (Optional) Precompute the target's tapped hidden states once, when the target's forward
     pass is what makes training slow. Use the same --draft-layers / --target-layer-ids /
     --max-length as for the run:

       dflash-train precompute --target TARGET --data data/my-target --out data/my-target-hidden

  3. Train (the paper's recipe: random anchors in the responses, resampled every epoch; all
     blocks of a sequence in one pass; loss weights exp(-(k-1)/gamma); frozen target;
     AdamW with warmup and cosine decay; gradient clipping):

       dflash-train run --target TARGET --data data/my-target --out runs/my-drafter \\
           --draft-layers 1 --block-size 16 --anchors 512 --epochs 6 --batch-size 8

     RUN/checkpoints/step_N/ is written every --save-every steps (the newest --keep-checkpoints
     are kept) and the finished drafter goes to RUN/drafter/; both are drafters in the
     published format (`dflash-mlx --target-model TARGET --draft-model RUN/drafter ...`).
     Running the same command again
     resumes from the newest checkpoint: weights, optimizer, schedule, step and data position
     (data order and anchors are drawn from --seed, the epoch and the sequence, so they are
     the same after a resume). A killed run loses at most --save-every steps.

     Every --eval-every steps the real decode loop measures tau (mean acceptance length) on
     the last --eval-prompts sequences, which are held out of training. Metrics go to
     RUN/metrics.jsonl and to wandb (offline unless WANDB_MODE or --wandb says otherwise;
     `wandb sync RUN/wandb/offline-run-*` uploads later).

  Data parallel over several machines (or processes) with mlx.launch; --batch-size is the
  global batch, split evenly over the ranks, and every rank needs the data directory:

       mlx.launch --backend ring --hosts mac1,mac2 -- dflash-train run --target ... --data ... --out ...
"""

import argparse
import os
import sys

from dflash.commands import run_command

from .dflash_train import TrainConfig

DEFAULTS = TrainConfig(target="", data="", out="")


def int_list(text: str):
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_drafter_shape(parser):
    parser.add_argument("--draft-layers", type=positive_int, default=DEFAULTS.draft_layers, help="drafter depth")
    parser.add_argument("--target-layer-ids", type=int_list, default=None,
                        help="target layers to tap, e.g. 1,9,17 (default: published rule)")  # fmt: skip
    parser.add_argument("--max-length", type=positive_int, default=DEFAULTS.max_length,
                        help="cut sequences (prompt + response) to this many tokens")  # fmt: skip
    parser.add_argument("--sequences", type=positive_int, default=None,
                        help="use the first N regenerated sequences (default: all)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dflash-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    regen = commands.add_parser("regenerate", help="answer prompts with the target and cache the answers")
    regen.add_argument("--target", required=True, help="mlx-lm target: local directory or hub id")
    regen.add_argument("--prompts", required=True, help="hub dataset id, or local file / directory")
    regen.add_argument("--out", required=True, help="data directory to write (and resume)")
    regen.add_argument("--split", default="train")
    regen.add_argument("--prompt-field", default=None)
    regen.add_argument("--limit", type=positive_int, default=None,
                       help="use the first N prompts (rerun with a larger N to extend the data)")  # fmt: skip
    regen.add_argument("--no-chat", dest="chat", action="store_false", help="do not apply the chat template")
    regen.add_argument("--max-prompt-tokens", type=positive_int, default=1024, help="skip longer prompts")
    regen.add_argument("--max-tokens", type=positive_int, default=1024, help="answer length limit")
    regen.add_argument("--temperature", type=float, default=0.0, help="0 answers greedily")
    regen.add_argument("--top-p", type=float, default=1.0)
    regen.add_argument("--batch-size", type=positive_int, default=8)
    regen.add_argument("--seed", type=int, default=0)

    pre = commands.add_parser("precompute", help="store the target's tapped hidden states in shards")
    pre.add_argument("--target", required=True)
    pre.add_argument("--data", required=True, help="data directory from `regenerate`")
    pre.add_argument("--out", required=True)
    add_drafter_shape(pre)
    pre.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    pre.add_argument("--shard-size", type=positive_int, default=64, help="sequences per shard")

    run = commands.add_parser("run", help="train (or resume training) a drafter")
    run.add_argument("--target", required=True)
    run.add_argument("--data", required=True, help="data directory from `regenerate`")
    run.add_argument("--out", required=True, help="run directory (resumed if it has checkpoints)")
    run.add_argument("--hidden-states", default=None, help="shard directory from `precompute`")
    add_drafter_shape(run)
    run.add_argument("--block-size", type=positive_int, default=DEFAULTS.block_size)
    run.add_argument("--mask-token-id", type=int, default=None)
    run.add_argument("--anchors", type=positive_int, default=DEFAULTS.anchors, help="anchors per sequence")
    run.add_argument("--gamma", type=float, default=None, help="loss weight decay (default from block size)")
    run.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs)
    run.add_argument(
        "--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="sequences per step, all ranks"
    )
    run.add_argument("--max-steps", type=positive_int, default=None, help="stop early; schedule unchanged")
    run.add_argument("--lr", type=float, default=DEFAULTS.lr)
    run.add_argument("--warmup", type=float, default=DEFAULTS.warmup, help="fraction of the steps")
    run.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    run.add_argument("--grad-clip", type=float, default=DEFAULTS.grad_clip)
    run.add_argument("--residual-init-scale", type=float, default=DEFAULTS.residual_init_scale,
                     help="initial scale of the layers' residual-writing projections")  # fmt: skip
    run.add_argument("--init-from-target", action="store_true",
                     help="start the draft layers as copies of the target's last layers (instead of a fresh init "
                     "with --residual-init-scale)")  # fmt: skip
    run.add_argument("--draft-vocab", type=positive_int, default=None, metavar="N",
                     help="the drafter proposes only the N tokens most frequent in the training responses: "
                     "its LM head (the target's rows of them) costs N/V of the whole one, in training and "
                     "drafting")  # fmt: skip
    run.add_argument("--dflash2", action="store_true",
                     help="train a DFlash 2 drafter: dynamic convolutions around every sublayer and a path selector")  # fmt: skip
    run.add_argument("--selector-rank", type=positive_int, default=DEFAULTS.selector_rank)
    run.add_argument("--selector-top-k", type=positive_int, default=DEFAULTS.selector_top_k,
                     help="candidates the path selector keeps at every block position")  # fmt: skip
    run.add_argument("--conv-group-size", type=positive_int, default=DEFAULTS.conv_group_size,
                     help="channels sharing one dynamic convolution kernel")  # fmt: skip
    run.add_argument("--conv-kernel-size", type=positive_int, default=DEFAULTS.conv_kernel_size)
    run.add_argument("--selector-weight", type=float, default=DEFAULTS.selector_weight,
                     help="the selector loss's weight beside the block loss")  # fmt: skip
    run.add_argument("--seed", type=int, default=DEFAULTS.seed)
    run.add_argument("--save-every", type=positive_int, default=DEFAULTS.save_every)
    run.add_argument("--keep-checkpoints", type=positive_int, default=DEFAULTS.keep_checkpoints)
    run.add_argument("--eval-every", type=positive_int, default=DEFAULTS.eval_every)
    run.add_argument(
        "--eval-prompts", type=int, default=DEFAULTS.eval_prompts, help="held-out sequences for tau (0: none)"
    )
    run.add_argument("--eval-max-tokens", type=positive_int, default=DEFAULTS.eval_max_tokens)
    run.add_argument("--save-dtype", choices=["bfloat16", "float16"], default=None,
                     help="dtype of the finished RUN/drafter (default float32; checkpoints stay float32)")  # fmt: skip
    run.add_argument(
        "--wandb", choices=["offline", "online", "disabled"], default=os.environ.get("WANDB_MODE", "offline")
    )
    run.add_argument("--wandb-project", default=DEFAULTS.wandb_project)
    return parser


def run(args) -> int:
    if args.command == "regenerate":
        from .data import regenerate

        options = {k: v for k, v in vars(args).items() if k not in ("command", "target", "prompts", "out")}
        path = regenerate(args.target, args.prompts, args.out, **options)
    elif args.command == "precompute":
        from .hidden_states import precompute

        path = precompute(args.target, args.data, args.out, args.draft_layers, args.target_layer_ids,
                          args.max_length, args.dtype, args.shard_size, args.sequences)  # fmt: skip
    else:
        from .dflash_train import train

        config = TrainConfig(**{k: v for k, v in vars(args).items() if k != "command"})
        path = train(config)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    return run_command("dflash-train", lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
