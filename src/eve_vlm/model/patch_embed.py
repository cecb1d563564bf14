"""The patch-embedding layer (PEL): the only vision module of an encoder-free VLM.

conv 16x16/16 -> exact GELU -> conv 2x2/2 to the LLM width; a learnable CLS vector first and a
learnable split vector after every row of patches (row-major). An HxW image (multiples of 32)
becomes 1 + h*(w+1) tokens with h = H/32, w = W/32. Names follow the official checkpoint
(`class_embedding`, `split_embedding`) so conversion is a rename, never a guess.
"""

import torch
from torch import nn

from ..processing.image import num_visual_tokens


class PatchEmbedding(nn.Module):
    def __init__(self, hidden_size: int, pel_hidden_size: int = 1024, patch_size: int = 16, dense_stride: int = 2):
        super().__init__()
        self.patch_size, self.dense_stride = patch_size, dense_stride
        self.conv1 = nn.Conv2d(3, pel_hidden_size, kernel_size=patch_size, stride=patch_size)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(pel_hidden_size, hidden_size, kernel_size=dense_stride, stride=dense_stride)
        self.class_embedding = nn.Parameter(torch.randn(hidden_size))
        self.split_embedding = nn.Parameter(torch.randn(hidden_size))

    def num_tokens(self, height: int, width: int) -> int:
        return num_visual_tokens(height, width, self.patch_size, self.dense_stride)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """`images`: normalized [3, H, W] tensors of any sizes -> one [1 + h(w+1), D] tensor each."""
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"image {i}: expected a [3, H, W] tensor, got shape {tuple(img.shape)}")
            self.num_tokens(img.shape[1], img.shape[2])  # validates the sides
        # Same-size images share one conv call; order is restored below.
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(tuple(img.shape[1:]), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        dtype = self.conv1.weight.dtype
        for idx in by_size.values():
            batch = torch.stack([images[i] for i in idx]).to(dtype=dtype, device=self.conv1.weight.device)
            feats = self.conv2(self.act(self.conv1(batch)))  # [n, D, h, w]
            n, d, h, w = feats.shape
            grid = feats.permute(0, 2, 3, 1)  # [n, h, w, D]
            split = self.split_embedding.to(grid.dtype).expand(n, h, 1, d)
            rows = torch.cat([grid, split], dim=2).reshape(n, h * (w + 1), d)
            cls = self.class_embedding.to(grid.dtype).expand(n, 1, d)
            tokens = torch.cat([cls, rows], dim=1)
            for j, i in enumerate(idx):
                out[i] = tokens[j]
        return out
