"""
Supervised fine-tuning on conversations: from a mid (else base) checkpoint to chatsft_checkpoints/.

    python -m scripts.chat_sft                                    # defaults: built-in tasks (+ SmolTalk when downloaded)
    python -m scripts.chat_sft --mixture exercises:6,chat:1,my_chats.txt:3
    torchrun --nproc_per_node 8 -m scripts.chat_sft

The loop lives in nanochat/chat_train.py (shared with mid-training); --help lists the flags.
"""
from nanochat.chat_train import main

if __name__ == "__main__":
    main("sft")
