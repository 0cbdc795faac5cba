"""Compile a Triton kernel for sm_90 without a GPU and read its resources from the cubin (helpers of the
``*_compile_report.py`` scripts).

:func:`compile_sm90` runs ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``; :func:`launch_signature` gives it
the signature, constants and alignment hints Triton's launcher would derive from real arguments (a tensor: a
pointer divisible by 16; an integer 1: the constant 1; an integer divisible by 16: marked so), so meta tensors at a
benchmark's shape specialise the kernel as the GPU run does. :func:`resources` disassembles the cubin with the
``cuobjdump`` / ``nvdisasm`` that ship with Triton and counts the instructions that say where a kernel spends its
time on Hopper.
"""
from __future__ import annotations

import os
import re
import subprocess

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
                 torch.int64: "*i64"}


def compile_sm90(fn, signature: dict, constexprs: dict, attrs: dict, warps: int, stages: int):
    """``triton.compile`` of the ``JITFunction`` ``fn`` for sm_90: ``signature`` name -> type (``"constexpr"`` for
    constants), ``constexprs`` ``(index,)`` -> value, ``attrs`` ``(index,)`` -> attribute list."""
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def launch_signature(fn, args: dict, constants: dict) -> tuple[dict, dict, dict]:
    """The specialisation of a launch of ``fn`` with ``args`` (name -> tensor, int or float; meta tensors will do)
    and the constexprs ``constants`` -> ``(signature, constexprs, attrs)`` for :func:`compile_sm90`."""
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        value = constants[name] if name in constants else args[name]
        if name in constants or (isinstance(value, int) and value == 1):
            signature[name] = "constexpr"
            constexprs[(i,)] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = POINTER_TYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text, flags=re.MULTILINE))


def loop_sizes(sass: str) -> list[int]:
    """SASS instructions of each loop in ``sass`` (``nvdisasm`` output), in program order: a loop is a branch back
    to an earlier label, its size the instructions from that label to the branch, both included (a loop nested in
    it counts once); the one-instruction self-loop after the exit is left out."""
    labels, sizes, count = {}, [], 0
    for line in sass.splitlines():
        label = re.match(r"^(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = count
            continue
        if not re.match(r"^\s+/\*[0-9a-f]+\*/\s+\S", line) or ".byte" in line or ".dword" in line:
            continue
        count += 1
        target = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", line)
        if target and target.group(1) in labels and count - labels[target.group(1)] > 1:  # not the exit's self-loop
            sizes.append(count - labels[target.group(1)])
    return sizes


def resources(compiled, path: str) -> dict:
    """Write the cubin of ``compiled`` to ``path`` and read it back: ``regs``, ``stack`` (spill) bytes (from
    ``cuobjdump -res-usage``), ``smem`` (bytes), SASS instruction counts (``HGMMA`` wgmma, ``HMMA`` mma.sync,
    ``LDGSTS`` cp.async, ``UTMALDG`` TMA loads, ``LDL`` / ``STL`` local memory, ``LDG`` global loads by width
    ``LDG128`` / ``LDG64`` / ``LDG32`` / ``LDG16``), ``cp_async_bytes`` (the sizes of the PTX cp.async copies) and
    ``loops`` (:func:`loop_sizes`)."""
    with open(path, "wb") as f:
        f.write(compiled.asm["cubin"])
    res = subprocess.run([os.path.join(TOOLS, "cuobjdump"), "-res-usage", path],
                         capture_output=True, text=True, check=True).stdout
    fields = dict(f.split(":") for line in res.splitlines() if "REG:" in line for f in line.split() if ":" in f)
    sass = subprocess.run([os.path.join(TOOLS, "nvdisasm"), path], capture_output=True, text=True, check=True).stdout
    ptx = compiled.asm["ptx"]
    ldg = re.findall(r"\bLDG\.E(\S*)", sass)
    width = lambda w: sum(1 for s in ldg if f".{w}" in s)  # noqa: E731
    return dict(regs=int(fields.get("REG", -1)), stack=int(fields.get("STACK", -1)), smem=compiled.metadata.shared,
                sass=sass, loops=loop_sizes(sass),
                HGMMA=sass.count("HGMMA"), HMMA=_count(r"\bHMMA\b", sass), LDGSTS=sass.count("LDGSTS"),
                UTMALDG=sass.count("UTMALDG"), LDL=sass.count("LDL"), STL=sass.count("STL"),
                LDG128=width(128), LDG64=width(64),
                LDG16=sum(1 for s in ldg if ".U16" in s or ".S16" in s),
                LDG32=sum(1 for s in ldg if not re.search(r"\.(128|64|U16|S16|U8|S8)", s)),
                cp_async_bytes=sorted(set(int(b, 0) for b in re.findall(
                    r"cp\.async\.c[ag]\.shared\.global(?:\.L2::\w+)? \[[^]]*\], \[[^]]*\], (0x[0-9a-f]+|\d+)", ptx))))


def dump_asm(compiled, sass: str, directory: str, tag: str) -> None:
    """Write a compiled kernel's PTX and SASS as ``directory/tag.ptx`` and ``directory/tag.sass``."""
    os.makedirs(directory, exist_ok=True)
    for ext, text in (("ptx", compiled.asm["ptx"]), ("sass", sass)):
        with open(os.path.join(directory, f"{tag}.{ext}"), "w") as f:
            f.write(text)
