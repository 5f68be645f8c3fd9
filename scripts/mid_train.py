"""
Mid-training: teach a base model the conversation format, tool use and the tasks, on a large
mixture at the full learning rate, from base_checkpoints/ to mid_checkpoints/.

    python -m scripts.mid_train                                   # defaults: built-in tasks (+ SmolTalk when downloaded)
    torchrun --nproc_per_node 8 -m scripts.mid_train --device_batch_size 16

It is scripts/chat_sft.py run with mid-training's defaults (nanochat.chat_data.PHASES): one script
to read, not two copies of it. --help lists the flags.
"""
import runpy

if __name__ == "__main__":
    runpy.run_module("scripts.chat_sft", init_globals={"PHASE": "mid"}, run_name="__main__")
