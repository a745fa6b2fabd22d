"""Loss formulas written out in numpy (float64), independent of the torch implementations, so the
loss tests compare against the formula rather than against the code under test."""
import numpy as np
import torch


def softmax(z, temp=1.0):
    z = np.asarray(z, dtype=np.float64) / temp
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(z, temp=1.0):
    z = np.asarray(z, dtype=np.float64) / temp
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def ce(z, y):
    """Mean CE against int labels."""
    return float(np.mean(-log_softmax(z)[np.arange(len(y)), y]))


def kl(p, q):
    """KL(p || q) per row."""
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def kd_per_sample(s, t, temp):
    return temp ** 2 * kl(softmax(t, temp), softmax(s, temp))


def self_ce_per_sample(s):
    return -log_softmax(s).max(-1)


def normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def relu(x):
    return np.maximum(x, 0.0)


def linear(layer: torch.nn.Linear, x):
    w = layer.weight.detach().double().numpy()
    out = x @ w.T
    return out + layer.bias.detach().double().numpy() if layer.bias is not None else out


def tensor(x, grad=False):
    return torch.tensor(np.asarray(x), dtype=torch.float32, requires_grad=grad)


def numerical_grad(f, x, eps=1e-6):
    """Central differences of the scalar function ``f`` at ``x`` (float64)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        g[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return g
