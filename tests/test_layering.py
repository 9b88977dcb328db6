"""The import order of simbert's modules: each module imports only modules of lower
layers, so the dependency graph has no cycles (read from the source with `ast`, imports
inside functions included)."""

import ast
import os
import re

import simbert
from helpers import ROOT

PACKAGE = os.path.join(ROOT, "simbert")

# Lowest first. A module may import modules of strictly lower layers only.
LAYERS = [
    {"errors", "atomic_files", "file_locks", "kernels", "workers"},
    {"arguments", "batch_sampling", "distribution", "tokenizer", "layers", "shapes", "text_files", "trace_store"},
    {"compiled", "config"},
    {"models", "readers"},
    {"checkpoints", "source_pass"},
    {"directories", "data", "losses", "optimizers", "cached_step", "generation", "gibbs", "retrieval"},
    {"cosent", "evaluation", "export", "index_parts", "labelled_pairs", "pair_classifier"},
    {"api", "training_model"},
    {"callbacks", "mining", "server"},
    {"trainer"},
    {"cli"},
]
RANK = {module: rank for rank, layer in enumerate(LAYERS) for module in layer}


def package_name_module(name):
    """The module behind `from simbert import name`: a module itself, the module a public
    name is exported from, or None for what `__init__` defines (`__version__`)."""
    if os.path.exists(os.path.join(PACKAGE, f"{name}.py")):
        return name
    return simbert._EXPORTS[name].split(".")[1] if name in simbert._EXPORTS else None


def simbert_imports(path):
    """`(line, module)` for each `simbert.<module>` this file imports."""
    with open(path, encoding="utf-8") as reader:
        tree = ast.parse(reader.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "simbert":
            for alias in node.names:
                if (module := package_name_module(alias.name)) is not None:
                    yield node.lineno, module
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "simbert":
            yield node.lineno, node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("simbert."):
                    yield node.lineno, alias.name.split(".")[1]


def violations():
    found = []
    for name in sorted(os.listdir(PACKAGE)):
        module, extension = os.path.splitext(name)
        if extension != ".py" or module == "__init__":
            continue
        assert module in RANK, f"simbert/{name} has no place in LAYERS; add it to the layer it belongs to"
        for line, imported in simbert_imports(os.path.join(PACKAGE, name)):
            if imported not in RANK or RANK[imported] >= RANK[module]:
                found.append(f"simbert/{name}:{line} imports simbert.{imported} "
                             f"(layer {RANK.get(imported, '?')}), not below {module} (layer {RANK[module]})")
    return found


def test_modules_import_only_lower_layers():
    assert violations() == []


def test_the_check_names_an_offending_import(tmp_path, monkeypatch):
    """The check itself fails, naming file, line and modules, on an upward import."""
    fake = tmp_path / "simbert"
    fake.mkdir()
    (fake / "models.py").write_text("import keras\n\nfrom simbert.api import SimBERT\n")
    (fake / "api.py").write_text("from simbert import models\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", str(fake))
    assert violations() == ["simbert/models.py:3 imports simbert.api (layer 7), not below models (layer 3)"]


def test_importing_simbert_starts_no_tensorflow():
    """`import simbert` (as `simbert --help` does) loads neither TensorFlow nor Keras, nor
    do the batch builders a spawned batch worker imports (`simbert.data`,
    `simbert.labelled_pairs`)."""
    import subprocess
    import sys

    code = ("import sys, simbert, simbert.cli, simbert.data, simbert.labelled_pairs; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


# Where the Keras backend may be read: the platform policy and the compiled functions.
BACKEND_READERS = {"kernels.py", "compiled.py"}
BACKEND_READ = re.compile(r"keras\.backend\.backend\(|check_backend\(\)\s*[!=]=|accelerator\(\)\s*[!=]=")


def backend_reads(package):
    """`file:line` of each read of the Keras backend outside `BACKEND_READERS`."""
    found = []
    for name in sorted(os.listdir(package)):
        if name.endswith(".py") and name not in BACKEND_READERS:
            with open(os.path.join(package, name), encoding="utf-8") as reader:
                found += [f"simbert/{name}:{number}" for number, line in enumerate(reader, 1)
                          if BACKEND_READ.search(line)]
    return found


def test_backend_decisions_live_in_the_platform_policy():
    """Modules read `simbert.kernels.Platform`'s fields; only kernels.py and compiled.py
    ask Keras which backend is active."""
    assert backend_reads(PACKAGE) == []


def test_the_backend_check_finds_a_read(tmp_path):
    (tmp_path / "api.py").write_text("import keras\n\nPER_SHAPE = keras.backend.backend() != 'tensorflow'\n")
    (tmp_path / "kernels.py").write_text("import keras\n\nBACKEND = keras.backend.backend()\n")
    assert backend_reads(str(tmp_path)) == ["simbert/api.py:3"]
