"""SASS opcodes of each loop of a compiled kernel (``sm90_report.loop_sizes``' loops), side by side for several
``.sass`` files (``scripts/dma_compile_report.py --dump DIR`` writes them): which instructions a change removed.

    python docs/results/session25/fwdtrim/loop_opcodes.py BEFORE.sass AFTER.sass [...]

Per loop: its size in each file, then ``OPCODE n1/n2/...`` (predicates and modifiers stripped), most frequent first.
"""
import collections
import re
import sys


def loops(path: str) -> list[list[str]]:
    """The instructions of each loop of ``path``, as ``sm90_report.loop_sizes`` delimits them."""
    labels, found, lines = {}, [], []
    for line in open(path):
        label = re.match(r"^(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(lines)
            continue
        if not re.match(r"^\s+/\*[0-9a-f]+\*/\s+\S", line) or ".byte" in line or ".dword" in line:
            continue
        lines.append(line)
        target = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", line)
        if target and target.group(1) in labels and len(lines) - labels[target.group(1)] > 1:
            found.append(lines[labels[target.group(1)]:])
    return found


def opcode(line: str) -> str:
    text = re.sub(r"^\s+/\*[0-9a-f]+\*/\s+", "", line)
    text = re.sub(r"^@!?U?P\w+\s+", "", text)
    return text.split()[0].split(".")[0].rstrip(";")


def main() -> None:
    per_file = [loops(path) for path in sys.argv[1:]]
    for n in range(max(len(found) for found in per_file)):
        counts = [collections.Counter(opcode(x) for x in found[n]) if n < len(found) else collections.Counter()
                  for found in per_file]
        names = sorted(set().union(*counts), key=lambda k: -max(c[k] for c in counts))
        print(f"loop {n}: " + " -> ".join(str(sum(c.values())) for c in counts))
        print("  " + "  ".join(f"{k} " + "/".join(str(c[k]) for c in counts) for k in names))


if __name__ == "__main__":
    main()
