"""nanochat: train your own small chat model on the machine you have."""
