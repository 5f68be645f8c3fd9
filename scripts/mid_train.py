"""
Mid-training: teach a base model the conversation format, tool use and the tasks, on a large
mixture, from base_checkpoints/ to mid_checkpoints/.

    python -m scripts.mid_train                                   # defaults: built-in tasks (+ SmolTalk when downloaded)
    torchrun --nproc_per_node 8 -m scripts.mid_train --device_batch_size 16

The loop lives in nanochat/chat_train.py (shared with SFT); --help lists the flags.
"""
from nanochat.chat_train import main

if __name__ == "__main__":
    main("mid")
