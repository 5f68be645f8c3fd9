"""
MLP layers: the dense MLP (relu^2 as nanochat, or SwiGLU) and a mixture of experts of them.

MoE: a router (n_embd -> n_experts) picks the top k experts of every token; their outputs are
summed with the router's softmax probabilities of the chosen experts, renormalised to sum to 1.
Each expert is an MLP of its own (hidden mlp_hidden), so a token runs k of them: parameters
count all experts, FLOPs per token only k. The load-balancing auxiliary loss (Switch
Transformer, Fedus et al. 2021) is n_experts * sum_e f_e * P_e, f_e the share of the routing
choices that went to expert e and P_e its mean router probability: 1.0 when routing is
balanced, larger the more it concentrates. The layer keeps its last value (`aux_loss`) and the
load per expert (`load`, f_e * n_experts: 1.0 is a fair share) for the training loop
(nanochat.trainer) to add and log.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        if self.kind == "swiglu":
            self.c_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)

    def forward(self, x):
        if self.kind == "swiglu":
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        else:
            # r * r rather than .square(): CUDA autocast runs pow in fp32 (and saves an fp32 copy
            # for backward); a product of bf16 values keeps the compute dtype, same value
            r = F.relu(self.c_fc(x))
            h = r * r
        return self.c_proj(h)


class MoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_experts, self.top_k = config.moe_experts, config.moe_top_k
        self.router = nn.Linear(config.n_embd, self.n_experts, bias=False)
        self.experts = nn.ModuleList([MLP(config) for _ in range(self.n_experts)])
        self.aux_loss = None
        self.load = None

    def route(self, x):
        """(probabilities (N, E) fp32, chosen experts (N, k), their renormalised weights (N, k))."""
        probs = F.softmax(self.router(x).float(), dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        return probs, chosen, weights / weights.sum(dim=-1, keepdim=True)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs, chosen, weights = self.route(x)
        E = self.n_experts
        counts = torch.bincount(chosen.flatten(), minlength=E).float()
        share = counts / chosen.numel()                # f_e: not differentiable (a count)
        aux = E * torch.sum(share * probs.mean(dim=0))  # differentiable through P_e
        if self.aux_loss is None:
            # kept once per model forward (GPT.forward clears it): the recomputation of a
            # checkpointed block in backward computes it again (it must save the same tensors) but
            # must not keep it, or its graph would hold the recomputed activations until the next forward
            self.aux_loss, self.load = aux, (share * E).detach()
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            # every expert runs, on no rows if none chose it, so its weights always get a
            # gradient (zero) and DDP sees every parameter used
            rows, slot = torch.nonzero(chosen == e, as_tuple=True)
            y = expert(x[rows]) * weights[rows, slot, None].to(x.dtype)
            out.index_add_(0, rows, y.to(out.dtype))
        return out.view(shape)


def moe_layers(model):
    return [m for m in model.modules() if isinstance(m, MoE)]


def moe_stats(model):
    """(mean auxiliary loss over the MoE layers, mean load per expert) of the last forward, or None without MoE."""
    layers = [m for m in moe_layers(model) if m.aux_loss is not None]
    if not layers:
        return None
    aux = torch.stack([m.aux_loss for m in layers]).mean()
    load = torch.stack([m.load for m in layers]).mean(dim=0)
    return aux, load
