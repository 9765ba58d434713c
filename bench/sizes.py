"""File, function and class sizes of the package (tests and benches left out): python bench/sizes.py ."""

import ast
import pathlib
import sys

root = pathlib.Path(sys.argv[1])
files = [
    p
    for p in root.rglob("*.py")
    if ".venv" not in p.parts
    and "tests" not in p.parts
    and "bench" not in p.parts
    and "build" not in p.parts
]
rows = []
funcs = []
classes = []
for p in files:
    src = p.read_text()
    n = len(src.splitlines())
    rows.append((n, str(p.relative_to(root))))
    t = ast.parse(src)
    for node in ast.walk(t):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            funcs.append((node.end_lineno - node.lineno + 1, f"{p.relative_to(root)}:{node.name}"))
        if isinstance(node, ast.ClassDef):
            methods = [
                n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            ]
            classes.append(
                (
                    node.end_lineno - node.lineno + 1,
                    len(methods),
                    f"{p.relative_to(root)}:{node.name}",
                )
            )
rows.sort(reverse=True)
funcs.sort(reverse=True)
classes.sort(reverse=True)
print(
    "files",
    len(rows),
    "lines",
    sum(r[0] for r in rows),
    "median",
    sorted(r[0] for r in rows)[len(rows) // 2],
)
print("largest files:", rows[:8])
print("largest functions:", funcs[:8])
print("largest classes (lines, methods):", classes[:6])
