"""
Bits per byte of a base model on the train and val splits.

    python -m scripts.base_loss                  # the latest base model
    python -m scripts.base_loss -g d4 --split_tokens 65536
"""

from nanochat.flags import add_device_args, add_model_source_args
from nanochat.common import ArgumentParser, compute_init, compute_cleanup, print0, die, UserError, get_compute_dtype, autocast_ctx
from nanochat.checkpoint_manager import load_model
from nanochat.dataloader import DataLoader
from nanochat.dataset import get_data_dir
from nanochat.tokenizer import get_token_bytes
from nanochat.loss_eval import evaluate_bpb
from nanochat import report

parser = ArgumentParser(description="Evaluate bits per byte of a model on the train and val splits.")
add_model_source_args(parser, source="base")
parser.add_argument("--data", type=str, default="auto", help="auto | fineweb | builtin | a folder of parquet shards")
parser.add_argument("--device_batch_size", type=int, default=8)
parser.add_argument("--split_tokens", type=int, default=20 * 524288, help="tokens evaluated per split")
add_device_args(parser)
args = parser.parse_args()

try:
    ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step)
    data_dir = get_data_dir(args.data)
    token_bytes = get_token_bytes(device)
except (UserError, FileNotFoundError) as e:
    die(str(e))
B, T = args.device_batch_size, meta["model_config"]["sequence_len"]
steps = max(1, args.split_tokens // (B * T * world_size))
autocast = autocast_ctx(device.type, get_compute_dtype(device.type))
results = {}
for split in ("train", "val"):
    loader = DataLoader(tokenizer, B, T, split, device=device, data_dir=data_dir)
    with autocast:
        results[split] = evaluate_bpb(model, loader, steps, token_bytes)
    print0(f"{split} bpb: {results[split]:.4f}")
report.append_section("base_loss", phase=args.source, settings=vars(args), device=device,
                      metrics={"model": f"{args.source}/{args.model_tag or '(deepest)'} step {meta['step']}",
                               "train bpb": results["train"], "val bpb": results["val"], "tokens per split": steps * B * T * world_size},
                      summary={"val bpb": results["val"], "train bpb": results["train"]})
compute_cleanup()
