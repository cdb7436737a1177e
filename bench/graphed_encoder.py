"""A what-if for the inference race: bertkit's packed encoder replayed from CUDA graphs.

The issue asks for CUDA graphs "if they pay". A graph needs static shapes, and every packed batch has its
own token count, so this pads the packed tokens up to a multiple of `granule` (one graph per bucket, all
sharing one memory pool) and gives the varlen kernel fixed-size arguments: `cu_seqlens` always holds
`max_batch + 2` offsets (the real sequences, one dummy sequence over the padding rows, then empty
sequences) and `max_seqlen` is always the position limit. What a graph saves is the launch of ~200 kernels
per batch; what it costs is the padding rows (under `granule` per batch) and a capture per bucket. This
lives in bench/ until bench/gpu.py says it pays; off CUDA (`use_graphs=False`) the same bucketed
computation runs eagerly, which the tests compare with the model's own forward.
"""
from __future__ import annotations

import dataclasses

import torch

from bertkit.modeling import BertModel
from bertkit.modeling import packing as P


class GraphedEncoder:
    """`encoder(ids, mask)` -> last_hidden_state `(batch, seqlen, hidden)`, zero at padding, like
    `BertModel(ids, mask).last_hidden_state`. `ids`, `mask`: CPU tensors (pinned for asynchronous copies);
    the packing is planned on the CPU, so no call waits for the GPU."""

    def __init__(self, model: BertModel, granule: int = 256, max_batch: int = 128, use_graphs: bool | None = None):
        if granule < 1 or granule > model.config.max_position_embeddings:
            raise ValueError(f"granule must be 1..max_position_embeddings "
                             f"({model.config.max_position_embeddings}), got {granule}")
        self.model, self.granule, self.max_batch = model.eval(), granule, max_batch
        self.device = model.device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.max_seqlen = model.config.max_position_embeddings  # fixed: the kernel's argument is baked in
        self.graphs: dict[int, tuple] = {}  # padded tokens -> (graph, static inputs, static output)
        self.pool = None

    def _inputs(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[P.Packing, int, dict]:
        """The plan, the bucket, and the padded packed inputs on the CPU: ids, positions, cu_seqlens."""
        if mask.shape[0] > self.max_batch:
            raise ValueError(f"batch of {mask.shape[0]} sequences exceeds max_batch={self.max_batch}")
        plan = P.pack(mask)
        tokens = int(plan.cu_seqlens[-1])
        padded = -(-tokens // self.granule) * self.granule
        flat_ids = P.unpad(ids, plan)                                               # (tokens,)
        positions = plan.indices % plan.seqlen                                      # (tokens,)
        cu = torch.full((self.max_batch + 2,), padded, dtype=torch.int32)         # (max_batch + 2,)
        cu[:plan.batch + 1] = plan.cu_seqlens
        pad = padded - tokens
        inputs = {"ids": torch.cat([flat_ids, flat_ids.new_zeros(pad)]),           # (padded,)
                  "positions": torch.cat([positions, positions.new_zeros(pad)]),   # (padded,)
                  "cu_seqlens": cu}
        return plan, padded, inputs

    def _encode(self, inputs: dict, plan: P.Packing, padded: int) -> torch.Tensor:
        """Embeddings and layers over the padded packed tokens: (padded, hidden)."""
        tokens = int(plan.cu_seqlens[-1])
        runs = plan.runs + (((tokens, 1, padded - tokens),) if padded > tokens else ())  # the per-run CPU path
        packing = dataclasses.replace(plan, cu_seqlens=inputs["cu_seqlens"], max_seqlen=self.max_seqlen,
                                      runs=runs)
        ids = inputs["ids"]
        h = self.model.embeddings(ids, torch.zeros_like(ids), inputs["positions"])  # (padded, hidden)
        for layer in self.model.encoder.layer:
            h, _ = layer(h, packing)
        return h

    def _graph(self, padded: int, plan: P.Packing, inputs: dict) -> tuple:
        """Capture the encoder for `padded` tokens (warm-up on a side stream first, as CUDA graphs want)."""
        static = {k: v.to(self.device) for k, v in inputs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._encode(static, plan, padded)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._encode(static, plan, padded)
        self.pool = graph.pool()
        return graph, static, out

    @torch.inference_mode()
    def capture(self, masks) -> int:
        """Capture the graphs the given masks' batches will need (done once, like a compile); returns how
        many buckets there are."""
        if self.use_graphs:
            for mask in masks:
                plan, padded, inputs = self._inputs(torch.zeros_like(mask), mask)
                if padded not in self.graphs:
                    self.graphs[padded] = self._graph(padded, plan, inputs)
        return len(self.graphs)

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        plan, padded, inputs = self._inputs(ids, mask)
        tokens = int(plan.cu_seqlens[-1])
        if self.device.type == "cuda":  # page-locked, so the copies below do not hold the host
            plan, inputs = plan.pin(), {k: v.pin_memory() for k, v in inputs.items()}
        if not self.use_graphs:
            h = self._encode({k: v.to(self.device) for k, v in inputs.items()}, plan, padded)
        else:
            if padded not in self.graphs:
                self.graphs[padded] = self._graph(padded, plan, inputs)
            graph, static, out = self.graphs[padded]
            for k, v in inputs.items():
                static[k].copy_(v, non_blocking=True)
            graph.replay()
            h = out
        # the output buffer is the graph's: repad copies the real rows out before any later replay
        return P.repad(h[:tokens], plan.to(self.device))                           # (batch, seqlen, hidden)
