"""The Cheems SSD block: Mamba2's state space duality with rotary position embedding on B and C.

``in_proj`` maps the hidden state to ``[z, x, B, C, dt]``; ``x, B, C`` go through an optional short causal
depthwise convolution (off by default: RoPE gives SSD its sense of position) and SiLU; RoPE (rotary dim =
``state_size``) rotates ``B`` and ``C`` exactly as attention rotates ``K`` and ``Q``, so ``C_t·B_s`` depends on
``t − s`` only (``rope="data"`` instead rotates by data-dependent cumulative angles, below);
``dt = softplus(dt + dt_bias)``, ``A = −exp(A_log)``; SSD with the ``D`` skip; the gated
RMSNorm ``norm(y · silu(z))`` (per group of channels, like Mamba2); ``out_proj``.

With ``use_rope=False, use_conv=True`` this is exactly the Mamba2 block (see ``layers/mamba2.py``).

Data-dependent rotary (``rope="data"``, in the style of Mamba-3): per head ``h`` and state pair ``r``,
``φ_t[h, r] = Σ_{s≤t} dt_s[h] · π · tanh(w_r · u_s)`` with ``u_s`` the layer's input (hidden state) and ``w`` the
rows of ``angle_proj`` (``n/2`` angles shared by the heads, which differ through ``dt``). ``C_t`` and ``B_t`` are
rotated by ``φ_t`` exactly as RoPE rotates them by ``θ_r · t`` (rotate-half pairs ``(r, r + n/2)``), so
``C_t·B_s`` sees ``φ_t − φ_s``: a complex-valued diagonal state whose phase advances with the data. Fixed RoPE is
the case ``dt_s · π · tanh(w_r · u_s) = θ_r``. B and C are per group but ``dt`` is per head, so they are expanded
to one copy per head before the rotation (SSD then runs with ``num_groups = num_heads``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import is_int, reject, require
from ..ops import gated_rms_norm, gated_rms_norm_linear, ssd, ssd_step
from ..ops.common import trusted_values
from ..ops.ssd import fused_step_usable, projected_step
from .rotary import RotaryEmbedding, RotaryTables, apply_rotary

ROPE_MODES = ("fixed", "data", "none")


class GatedRMSNorm(nn.Module):
    """``weight · rmsnorm(x · silu(gate))`` with the RMS taken over ``num_groups`` equal groups of channels.

    Computed in float32 (float64 for float64 inputs), returned in ``promote(weight, x)``. ``num_groups=1`` is HF
    ``MambaRMSNormGated``; ``num_groups = n_groups`` is mamba_ssm's ``RMSNormGated(group_size=d/n_groups)``.
    One fused kernel on CUDA (``wm.ops.gated_rms_norm``).

    Args:
        hidden_size: channels ``d`` (divisible by ``num_groups``).
        num_groups: groups normalised separately.
        eps: added to the mean square.
        backend: of :func:`~wonderful_matrices.ops.gated_rms_norm`: ``"auto"``, ``"torch"`` or ``"triton"``.
    """

    def __init__(self, hidden_size: int, num_groups: int = 1, eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        require(num_groups >= 1 and hidden_size % num_groups == 0, "num_groups", num_groups,
                f"a divisor of hidden_size={hidden_size}")
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.num_groups = num_groups
        self.eps = eps
        self.backend = backend

    def forward(self, x: torch.Tensor, gate: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x, gate (..., d) -> (..., d) in ``promote(weight, x)`` (or ``out_dtype``)."""
        return gated_rms_norm(x, gate, self.weight, self.eps, num_groups=self.num_groups, backend=self.backend,
                              out_dtype=out_dtype)

    def project(self, x: torch.Tensor, gate: torch.Tensor, linear: nn.Linear,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``linear(self(x, gate, out_dtype))``: x, gate (..., d) -> (..., linear.out_features), the norm's output
        recomputed in the backward rather than kept (:func:`~wonderful_matrices.ops.gated_rms_norm_linear`)."""
        return gated_rms_norm_linear(x, gate, self.weight, linear.weight, linear.bias, self.eps,
                                     num_groups=self.num_groups, backend=self.backend, out_dtype=out_dtype)


class SSDMixer(nn.Module):
    """SSD sequence mixer (the layer contract of docs/architecture.md: ``forward(hidden_states, position_ids,
    attention_mask, state) -> (b, l, hidden_size)``).

    Args:
        hidden_size: model width ``d``.
        num_heads: SSD heads ``h``; the inner width is ``num_heads · head_dim`` (no separate expand factor).
        head_dim: ``p``, channels per head.
        state_size: ``n``, the state size (and the rotary dim; even unless ``rope="none"``).
        num_groups: ``g`` groups of heads sharing B and C (``num_heads % num_groups == 0``).
        chunk_size: chunk of the dual algorithm (a power of two).
        use_rope: rotate B and C by position (the paper's unified position encoding); the older spelling of
            ``rope``, used when ``rope`` is None (True = ``"fixed"``, False = ``"none"``).
        rope: ``"fixed"`` (RoPE on B and C), ``"data"`` (data-dependent rotary, above) or ``"none"``.
        rope_theta: rotary base.
        use_conv: short causal depthwise convolution over ``[x, B, C]`` (the Mamba2 way; off for Cheems).
        conv_kernel: its width.
        conv_bias: a bias in the convolution.
        bias: biases in ``in_proj`` and ``out_proj``.
        norm_eps: epsilon of the gated RMSNorm.
        norm_groups: groups of the gated RMSNorm (default ``num_groups``, as mamba_ssm does).
        dt_min, dt_max, dt_init_floor: ``softplus(dt_bias)`` starts log-uniform in ``[dt_min, dt_max]``
            (at least ``dt_init_floor``), as in Mamba2.
        dt_limit: ``(low, high)`` clamp of ``dt`` after softplus (default: none).
        A_init_range: ``−A`` starts uniform in this range.
        layer_idx: the layer's index in the model (kept for the cache owner).
        backend: SSD backend passed to :func:`wonderful_matrices.ops.ssd`.

    Parameters use HF Mamba2's names: ``in_proj, conv1d, dt_bias, A_log, D, norm, out_proj``. ``in_proj`` emits
    ``[z (h·p), x (h·p), B (g·n), C (g·n), dt (h)]`` in that order.

    Caching (``state`` a dict): ``state["ssm_state"]`` (b, h, p, n) float32 (float64 for a float64 layer), plus
    ``state["conv_state"]`` (b, h·p + 2·g·n, conv_kernel − 1), the last pre-convolution inputs, when
    ``use_conv``. A one-token call with a state uses :func:`ssd_step`; longer calls use :func:`ssd` with the
    state as ``initial_state``. With ``rope="data"`` the state also holds ``state["rope_angle"]`` (b, h, n/2),
    the running angle ``φ`` of the last token (float32, float64 for a float64 layer; kept modulo 2π). Padding
    (``attention_mask == 0``) gets ``dt = 0`` and zero ``x, B, C`` inputs, so the state (and the running angle)
    passes through unchanged; the convolution history kept in the state skips padded tokens
    (inside one call a padded token is a zero input to the convolution windows after it, which is exact for
    left padding).

    Packed documents (``seq_idx`` (b, l) non-decreasing document ids): SSD restarts its state at each document's
    first token, and the convolution window of a token holds only inputs of its own document; RoPE positions
    come from ``position_ids`` (the model restarts them per document) and the data-dependent angle restarts at
    each document's first token. A cached state, convolution history or running angle belongs to the row's
    first document.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, state_size: int, num_groups: int = 1,
                 chunk_size: int = 64, use_rope: bool = True, rope_theta: float = 10000.0, use_conv: bool = False,
                 conv_kernel: int = 4, conv_bias: bool = True, bias: bool = False, norm_eps: float = 1e-6,
                 norm_groups: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, dt_limit: tuple[float, float] = (0.0, float("inf")),
                 A_init_range: tuple[float, float] = (1.0, 16.0), layer_idx: int | None = None,
                 backend: str = "auto", rope: str | None = None):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("head_dim", head_dim),
                            ("state_size", state_size), ("num_groups", num_groups), ("conv_kernel", conv_kernel)):
            require(is_int(value) and value >= 1, name, value, "an integer >= 1")
        require(num_heads % num_groups == 0, "num_groups", num_groups, f"a divisor of num_heads={num_heads}")
        require(is_int(chunk_size) and chunk_size >= 1 and chunk_size & (chunk_size - 1) == 0,
                "chunk_size", chunk_size, "a power of two")
        rope = ("fixed" if use_rope else "none") if rope is None else rope
        require(rope in ROPE_MODES, "rope", rope, f"one of {ROPE_MODES}")
        require(rope == "none" or state_size % 2 == 0, "state_size", state_size,
                f"an even number when rope={rope!r} (it is the rotary dim)")
        inner = num_heads * head_dim
        norm_groups = num_groups if norm_groups is None else norm_groups
        require(is_int(norm_groups) and norm_groups >= 1 and inner % norm_groups == 0, "norm_groups",
                norm_groups, f"a divisor of num_heads*head_dim={inner}")
        require(0 < dt_min <= dt_max, "dt_min", (dt_min, dt_max), "0 < dt_min <= dt_max")
        require(len(dt_limit) == 2 and 0 <= dt_limit[0] < dt_limit[1], "dt_limit", dt_limit,
                "(low, high), 0 <= low < high")
        require(len(A_init_range) == 2 and 0 < A_init_range[0] <= A_init_range[1], "A_init_range", A_init_range,
                "(low, high) with 0 < low <= high")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.state_size, self.num_groups, self.chunk_size = state_size, num_groups, chunk_size
        self.inner_size = inner
        self.conv_dim = inner + 2 * num_groups * state_size
        self.rope, self.use_conv = rope, use_conv
        self.use_rope = rope == "fixed"  # rotation by position, from ``position_ids``
        # the input's only reader is in_proj (the data-dependent rotary reads it too): see CheemsBlock
        self.single_cast_input = rope != "data"
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.layer_idx = layer_idx
        self.backend = backend

        self.in_proj = nn.Linear(hidden_size, inner + self.conv_dim + num_heads, bias=bias)
        if use_conv:
            self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel, groups=self.conv_dim,
                                    padding=conv_kernel - 1, bias=conv_bias)
        self.rotary = RotaryEmbedding(state_size, rope_theta) if rope == "fixed" else None
        if rope == "data":  # w: one row per state pair
            self.angle_proj = nn.Linear(hidden_size, state_size // 2, bias=False)

        self.dt_init = (float(dt_min), float(dt_max), float(dt_init_floor))
        self.A_init_range = (float(A_init_range[0]), float(A_init_range[1]))
        initial = self.initial_values()
        self.dt_bias = nn.Parameter(initial["dt_bias"])
        self.A_log = nn.Parameter(initial["A_log"])
        self.D = nn.Parameter(initial["D"])
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(inner, norm_groups, norm_eps)
        self.out_proj = nn.Linear(inner, hidden_size, bias=bias)

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Freshly drawn initial values of ``dt_bias``, ``A_log`` and ``D`` (each ``(num_heads,)`` float32):
        ``softplus(dt_bias)`` log-uniform in ``[dt_min, dt_max]`` (at least ``dt_init_floor``), ``-exp(A_log)``
        uniform in ``-A_init_range``, ``D = 1``."""
        dt_min, dt_max, dt_floor = self.dt_init
        h = self.num_heads
        dt = torch.exp(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        return {"dt_bias": dt + torch.log(-torch.expm1(-dt)),  # softplus^-1(dt)
                "A_log": torch.log(torch.empty(h).uniform_(*self.A_init_range)), "D": torch.ones(h)}

    def _inputs_valid(self, hidden_states, position_ids, attention_mask, state) -> bool:
        """Whether :meth:`_check_inputs` passes, as one expression: a decoding step builds no error message."""
        return (isinstance(hidden_states, torch.Tensor) and hidden_states.dim() == 3
                and hidden_states.shape[-1] == self.hidden_size and hidden_states.shape[1] >= 1
                and (position_ids is None and not self.use_rope
                     or isinstance(position_ids, torch.Tensor) and position_ids.shape == hidden_states.shape[:2]
                     and not position_ids.is_floating_point())
                and (attention_mask is None or attention_mask.shape == hidden_states.shape[:2])
                and (state is None or isinstance(state, dict)))

    def _check_inputs(self, hidden_states, position_ids, attention_mask, state) -> None:
        """The argument checks of :meth:`forward`, one error each (run when :meth:`_inputs_valid` is False)."""
        if not (isinstance(hidden_states, torch.Tensor) and hidden_states.dim() == 3
                and hidden_states.shape[-1] == self.hidden_size and hidden_states.shape[1] >= 1):
            reject("hidden_states.shape", tuple(getattr(hidden_states, "shape", ())),
                   f"(b, l, {self.hidden_size}) with l >= 1")
        b, l = hidden_states.shape[:2]
        if self.use_rope:
            if not isinstance(position_ids, torch.Tensor):
                reject("position_ids", position_ids, "a (b, l) integer tensor (RoPE needs positions)")
        if position_ids is not None:
            if not (tuple(position_ids.shape) == (b, l) and not position_ids.is_floating_point()):
                reject("position_ids.shape", tuple(position_ids.shape), f"({b}, {l}) integers")
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (b, l):
                reject("attention_mask.shape", tuple(attention_mask.shape),
                       f"({b}, {l}): the tokens of this call")
        if not (state is None or isinstance(state, dict)):
            reject("state", type(state).__name__, "None or a dict")

    def _conv(self, xbc: torch.Tensor, state: dict | None, keep: torch.Tensor | None,
              seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Causal depthwise conv over xbc (b, l, conv_dim), continuing from ``state["conv_state"]`` if present.

        The stored history is the last ``conv_kernel − 1`` inputs of *real* tokens (``keep`` (b, l, 1) marks
        them), so padding never enters a later call's window. With ``seq_idx`` (b, l) a tap reading another
        document's input is dropped (the history counts as the first document's).
        """
        weight = self.conv1d.weight  # (conv_dim, 1, k)
        width = weight.shape[-1] - 1
        xt = xbc.transpose(1, 2)
        history = state.get("conv_state") if state is not None else None
        if history is None:
            full = F.pad(xt, (width, 0))
        else:
            full = torch.cat([history.to(xt.dtype), xt], dim=-1)
        if state is not None:
            if keep is None:
                state["conv_state"] = full[..., full.shape[-1] - width:]
            else:  # the last `width` columns among the history and this call's real tokens
                real = F.pad(keep[..., 0], (width, 0), value=True)
                order = torch.arange(real.shape[-1], device=real.device).expand_as(real)
                cols = torch.where(real, order, -1).topk(width, dim=-1).values.flip(-1)
                state["conv_state"] = full.gather(-1, cols[:, None, :].expand(-1, full.shape[1], -1))
        if seq_idx is None:
            return F.conv1d(full, weight, self.conv1d.bias, groups=self.conv_dim).transpose(1, 2)
        return self._conv_documents(full, seq_idx).transpose(1, 2)

    def _conv_documents(self, full: torch.Tensor, seq_idx: torch.Tensor) -> torch.Tensor:
        """The depthwise conv of ``full`` (b, conv_dim, width + l) as a sum over its taps, each tap masked where it
        reads another document's input -> (b, conv_dim, l). seq_idx (b, l); elementwise work, no (l, l) tensor."""
        weight = self.conv1d.weight[:, 0]  # (conv_dim, k)
        width = weight.shape[-1] - 1
        l = seq_idx.shape[1]
        seq = torch.cat([seq_idx[:, :1].expand(-1, width), seq_idx], dim=1)  # history: the first document
        out = full[..., width:] * weight[:, width, None]  # tap 0 reads the token itself
        for shift in range(1, width + 1):
            same = (seq[:, width - shift:width - shift + l] == seq_idx)[:, None]  # (b, 1, l)
            out = out + full[..., width - shift:width - shift + l] * weight[:, width - shift, None] * same
        return out if self.conv1d.bias is None else out + self.conv1d.bias[:, None]

    def data_angles(self, hidden_states: torch.Tensor, dt: torch.Tensor, initial: torch.Tensor | None = None,
                    seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """The data-dependent rotary angles ``φ_t[h, r] = φ_0 + Σ_{s≤t} dt_s[h] · π · tanh(w_r · u_s)``.

        hidden_states (b, l, d) the layer input ``u``, dt (b, l, h) after softplus (zero on padding, which then
        leaves the angle unchanged), initial (b, h, n/2) the running angle ``φ_0`` before this call or None (zero),
        seq_idx (b, l) document ids or None -> (b, l, h, n/2) in ``dt.dtype``. With ``seq_idx`` the sum restarts
        at each document's first token and ``initial`` counts for the row's first document only."""
        rate = math.pi * torch.tanh(self.angle_proj(hidden_states).to(dt.dtype))  # (b, l, n/2)
        step = dt[..., None] * rate[:, :, None, :]  # (b, l, h, n/2)
        angle = step.cumsum(dim=1)
        first_document = None
        if seq_idx is not None:  # subtract the sum up to each document's first token (exclusive)
            l = seq_idx.shape[1]
            starts = F.pad(seq_idx[:, 1:] != seq_idx[:, :-1], (1, 0), value=True)
            order = torch.arange(l, device=seq_idx.device).expand_as(seq_idx)
            start = torch.where(starts, order, 0).cummax(dim=1).values  # (b, l): the own document's first token
            before = (angle - step).gather(1, start[:, :, None, None].expand_as(angle))
            angle = angle - before
            first_document = (start == 0)[:, :, None, None]
        if initial is not None:
            carried = initial[:, None].to(angle.dtype)
            angle = angle + (carried if first_document is None else carried * first_document)
        return angle

    def _rotate_by_data(self, BC: torch.Tensor, hidden_states: torch.Tensor, dt: torch.Tensor, state: dict | None,
                        seq_idx: torch.Tensor | None) -> torch.Tensor:
        """BC (b, l, 2g, n) (B's groups, then C's) -> (b, l, 2h, n): expanded to heads and rotated by
        :meth:`data_angles`, continuing from and updating ``state["rope_angle"]``."""
        b, l, _, n = BC.shape
        h = self.num_heads
        initial = state.get("rope_angle") if state is not None else None
        angle = self.data_angles(hidden_states, dt, initial, seq_idx)  # (b, l, h, n/2)
        if state is not None:  # modulo 2π: a long generation keeps the angle's float32 resolution
            state["rope_angle"] = torch.remainder(angle[:, -1], 2 * math.pi)
        angle = torch.cat([angle, angle], dim=-1).reshape(b, l * h, n)  # rotate-half pairs (r, r + n/2)
        cos, sin = angle.cos(), angle.sin()
        heads_per_group = h // self.num_groups
        out = []
        for M in BC.chunk(2, dim=2):  # B, then C: (b, l, g, n) -> one copy per head, rotated by that head's angle
            M = M.repeat_interleave(heads_per_group, dim=2).reshape(b, l * h, 1, n)
            out.append(apply_rotary(M, cos, sin).reshape(b, l, h, n))
        return torch.cat(out, dim=2)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, state: dict | None = None,
                seq_idx: torch.Tensor | None = None, rotary_tables: RotaryTables | None = None) -> torch.Tensor:
        """hidden_states (b, l, d), position_ids (b, l) long, attention_mask (b, l) or None (1 = real token),
        state: None or this layer's cache dict (read and updated in place), seq_idx (b, l) document ids of
        packed rows or None, rotary_tables (the forward's :class:`RotaryTables` of these ``position_ids``, shared
        by a model's layers; used with ``rope="fixed"``) or None (the layer builds its own) -> (b, l, d)."""
        if not self._inputs_valid(hidden_states, position_ids, attention_mask, state):
            self._check_inputs(hidden_states, position_ids, attention_mask, state)
        if seq_idx is not None:
            require(isinstance(seq_idx, torch.Tensor) and tuple(seq_idx.shape) == tuple(hidden_states.shape[:2]),
                    "seq_idx.shape", tuple(getattr(seq_idx, "shape", ())),
                    f"{tuple(hidden_states.shape[:2])}: one document id per token")
        if self._steps_fused(hidden_states, attention_mask, state, seq_idx):
            return self._fused_step(hidden_states, position_ids, state)
        b, l, _ = hidden_states.shape
        h, p, g, n = self.num_heads, self.head_dim, self.num_groups, self.state_size
        acc = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
        keep = attention_mask.to(device=hidden_states.device, dtype=torch.bool)[..., None] \
            if attention_mask is not None else None

        z, xbc, dt = self.in_proj(hidden_states).split([self.inner_size, self.conv_dim, h], dim=-1)
        if keep is not None:
            xbc = xbc.masked_fill(~keep, 0.0)
        if self.use_conv:
            xbc = self._conv(xbc, state, keep, seq_idx)
        if keep is not None:  # padding is 0 after the SiLU too
            xbc = xbc.masked_fill(~keep, 0.0)
        # x stays a pre-activation: ssd applies the SiLU (x_activation) and keeps x, not SiLU(x), for the backward
        x, BC = xbc.split([self.inner_size, 2 * g * n], dim=-1)
        BC = F.silu(BC).reshape(b, l, 2 * g, n)  # B's g groups, then C's
        dt = F.softplus(dt.to(acc) + self.dt_bias.to(acc))
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        if keep is not None:
            dt = dt.masked_fill(~keep, 0.0)
        if self.rope == "fixed":  # B and C rotate by the same angles: one call for both
            tables = RotaryTables(position_ids.to(hidden_states.device)) if rotary_tables is None else rotary_tables
            cos, sin = tables(self.rotary, torch.float64 if BC.dtype == torch.float64 else torch.float32)
            BC = apply_rotary(BC, cos, sin)
        elif self.rope == "data":
            BC = self._rotate_by_data(BC, hidden_states, dt, state, seq_idx)
        B, C = BC.split([BC.shape[2] // 2] * 2, dim=2)
        # x, B and C stay in the activation dtype (bf16 under autocast): the SSD kernels accumulate in float32,
        # and float32 inputs would make the Triton kernels use exact float32 products (no tensor cores, ~10x slower)
        x = x.reshape(b, l, h, p)
        A = -torch.exp(self.A_log.to(acc))

        with trusted_values():  # A < 0 and dt >= 0 by construction: no device sync per call for value checks
            if state is None:
                y = ssd(x, dt, A, B, C, chunk_size=self.chunk_size, D=self.D, seq_idx=seq_idx, backend=self.backend,
                        x_activation="silu")
            else:
                previous = state.get("ssm_state")
                if previous is not None and l == 1:  # one token: one document
                    y, new_state = ssd_step(previous, F.silu(x[:, 0]), dt[:, 0], A, B[:, 0], C[:, 0], D=self.D)
                    y = y[:, None]
                else:
                    y, new_state = ssd(x, dt, A, B, C, chunk_size=self.chunk_size, D=self.D, initial_state=previous,
                                       return_final_state=True, seq_idx=seq_idx, backend=self.backend,
                                       x_activation="silu")
                state["ssm_state"] = new_state
        # the norm stores its output in the input's dtype (the autocast dtype under autocast: the block's norm
        # gives it), the dtype out_proj computes in
        return self.norm.project(y.reshape(b, l, self.inner_size), z, self.out_proj, out_dtype=hidden_states.dtype)

    def _steps_fused(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, state: dict | None,
                     seq_idx: torch.Tensor | None) -> bool:
        """Whether this call is a decoding token that :meth:`_fused_step` runs: one token, no padding mask, a
        float32 state, no autograd, no convolution, and the backend allows the fused kernel on this device."""
        if (state is None or hidden_states.shape[1] != 1 or attention_mask is not None or seq_idx is not None
                or self.use_conv or torch.is_grad_enabled()):
            return False
        previous = state.get("ssm_state")
        angle = state.get("rope_angle")
        if previous is None or previous.dtype != torch.float32 or (
                self.rope == "data" and (angle is None or angle.dtype != torch.float32)):
            return False
        return fused_step_usable(self.backend, hidden_states.device, hidden_states.dtype)

    def _fused_step(self, hidden_states: torch.Tensor, position_ids: torch.Tensor | None, state: dict) -> torch.Tensor:
        """One token: ``in_proj``, the fused SSD step (:func:`~wonderful_matrices.ops.ssd.projected_step`: state
        and running angle updated in place), the gated norm and ``out_proj`` -> (b, 1, d)."""
        for name in ("ssm_state", "rope_angle"):
            if name in state and not state[name].is_contiguous():
                state[name] = state[name].contiguous()
        # (b, d) rows from here on: a linear on a 2-D input is two ATen ops, on (b, 1, d) four
        proj = self.in_proj(hidden_states[:, 0])
        fixed = self.rope == "fixed"
        y = projected_step(
            proj, state["ssm_state"], self.dt_bias, self.A_log, self.D, self.num_heads, self.head_dim,
            self.num_groups, self.state_size, self.dt_limit, self.rope,
            position=position_ids[:, 0].to(hidden_states.device) if fixed else None,
            inv_freq=self.rotary.float32_frequencies(hidden_states.device) if fixed else None,
            rate=self.angle_proj(hidden_states[:, 0]) if self.rope == "data" else None,
            angle=state.get("rope_angle") if self.rope == "data" else None)
        return self.out_proj(self.norm(y, proj[:, :self.inner_size], out_dtype=hidden_states.dtype))[:, None]
