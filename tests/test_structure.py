"""Structure of the package, read from its source (ast): the engine knows no stage, FLOP formulas live
in winnow/flops.py, id hashes go through winnow.pipeline.documents. Each check is also run on a planted
violation, so a check that can no longer fail fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "winnow"

# (a) the engine knows no stage --------------------------------------------------------------------

ENGINE_MODULES = ("pipeline/engine.py", "pipeline/run.py", "pipeline/stage.py", "pipeline/manifest.py",
                  "pipeline/shards.py")
STAGE_PACKAGES = ("winnow.filters", "winnow.tokenize", "winnow.raters", "winnow.synth", "winnow.proxy")
_MODULE_STRING = re.compile(r"^winnow(\.\w+)+(:\w+)?$")


def _imported_modules(tree: ast.AST, package: str) -> list[str]:
    """Every module an import statement names (anywhere, lazy imports included), relative ones resolved
    against `package`; plus string constants that spell a winnow module (importlib by name)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out += [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            out.append(node.value.split(":")[0])
    return out


def engine_violations(sources: dict[str, str]) -> list[str]:
    bad = []
    for rel, text in sources.items():
        for name in _imported_modules(ast.parse(text), "winnow.pipeline"):
            if any(name == p or name.startswith(p + ".") for p in STAGE_PACKAGES):
                bad.append(f"{rel} imports {name}")
    return bad


# (b) FLOP formulas only in winnow/flops.py --------------------------------------------------------

FLOP_MODULE = "flops.py"
# functions named *flop* outside winnow/flops.py: thin wrappers that call winnow.flops, or accounting
# that adds up FLOPs recorded elsewhere (no formula of its own); the rule below keeps them formula-free
FLOP_NAMED_FUNCTIONS = {
    "proxy/flops.py": {"flops_per_token", "training_flops"},          # ProxyConfig -> winnow.flops
    "raters/datarater.py": {"scoring_flops_per_token"},               # RaterConfig -> winnow.flops
    "raters/embed.py": {"encoder_flops"},                             # a loaded encoder -> winnow.flops
    "raters/fasttext_rater.py": {"fasttext_training_flops"},          # texts and settings -> winnow.flops
    "raters/reference_lm.py": {"LoadedLM.flops"},                     # a loaded LM -> winnow.flops
    "pipeline/stage.py": {"Stage.flops"},                             # the engine's hook (0 by default)
    "proxy/cost.py": {"CurationCost.net_flops", "chain_flops"},       # sums of recorded FLOPs
    "proxy/multiplier.py": {"baseline_flops_for"},                    # interpolation on a measured curve
    "report/render.py": {"flops"},                                    # formats a recorded number as HTML
}


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _constant_products(node: ast.AST) -> list[ast.BinOp]:
    """`2.0 * x`, `x * 6`: multiplications by a number literal, the mark of a formula."""
    return [n for n in ast.walk(node) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult)
            and (_is_number(n.left) or _is_number(n.right))]


def _flop_named(text: str) -> bool:
    return "flop" in text.lower()


def _functions(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(qualified name, node) of every function, methods as Class.method."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def flop_violations(sources: dict[str, str], allowed: dict[str, set[str]] = FLOP_NAMED_FUNCTIONS) -> list[str]:
    bad = []
    for rel, text in sources.items():
        if rel == FLOP_MODULE:
            continue
        tree = ast.parse(text)
        for qualname, fn in _functions(tree):
            if _flop_named(fn.name):
                if qualname not in allowed.get(rel, set()):
                    bad.append(f"{rel}: {qualname} computes FLOPs outside winnow/flops.py (or add it to "
                               "FLOP_NAMED_FUNCTIONS if it is a thin wrapper)")
                bad += [f"{rel}:{n.lineno} {qualname}: FLOP arithmetic {ast.unparse(n)}" for n in _constant_products(fn)]
        for node in ast.walk(tree):   # FLOP values computed in place
            values = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if node.value is not None and any(_flop_named(ast.unparse(t)) for t in targets):
                    values.append(node.value)
            elif isinstance(node, ast.Dict):
                values += [v for k, v in zip(node.keys, node.values, strict=True) if isinstance(k, ast.Constant)
                           and isinstance(k.value, str) and _flop_named(k.value)]
            elif isinstance(node, ast.keyword) and node.arg and _flop_named(node.arg):
                values.append(node.value)
            bad += [f"{rel}:{n.lineno}: FLOP arithmetic {ast.unparse(n)}" for v in values for n in _constant_products(v)]
    for rel, names in allowed.items():   # a stale allow-list hides nothing
        present = {q for q, _ in _functions(ast.parse(sources[rel]))} if rel in sources else set()
        bad += [f"FLOP_NAMED_FUNCTIONS lists {rel}: {n}, which is not there" for n in sorted(names - present)]
    return sorted(set(bad))


# (c) id hashes only through winnow.pipeline.documents ---------------------------------------------

HASH_HELPER = {"pipeline/documents.py": {"_hash_seed", "id_hash", "id_hashes"}}
# xxhash calls that hash content, not ids (or, verify.py, compare id sets rather than choose)
CONTENT_HASHES = {
    "filters/minhash_dedup.py": {"_word_hashes", "shingle_hashes"},   # words / texts for MinHash
    "filters/line_dedup.py": {"unit_hashes"},                          # normalised lines and paragraphs
    "pipeline/dupfind.py": {"hash128"},                                # exact-dedup keys
    "pipeline/shards.py": {"file_hash"},                               # shard fingerprints
    "synth/rephrase.py": {"RephraseStage._request_seed"},             # chunk + style -> sampling seed
    "pipeline/verify.py": {"_id_hashes"},                              # id sets of two runs compared
    "pipeline/ngrams.py": {"word_hashes"},                             # words of n-grams (decontamination)
    "proxy/overlap.py": {"heldout_overlap", "downstream_overlap"},     # texts checked once against held-out sets
}


def hash_violations(sources: dict[str, str], allowed: dict[str, set[str]] | None = None) -> list[str]:
    allowed = allowed if allowed is not None else {**CONTENT_HASHES, **HASH_HELPER}
    bad, used = [], set()
    for rel, text in sources.items():
        tree = ast.parse(text)
        owner = {}   # node -> innermost function qualname
        for qualname, fn in sorted(_functions(tree), key=lambda q: q[0].count(".")):
            for n in ast.walk(fn):
                owner[n] = qualname
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "xxhash":
                bad.append(f"{rel}:{node.lineno}: from xxhash import ... (use winnow.pipeline.documents.id_hash)")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "xxhash":
                where = owner.get(node, "<module>")
                if where in allowed.get(rel, set()):
                    used.add((rel, where))
                else:
                    bad.append(f"{rel}:{node.lineno} {where}: xxhash.{node.attr} outside the id-hash helper "
                               "(winnow.pipeline.documents.id_hash / id_hashes / id_unit) and the content hashes")
    bad += [f"{rel}: {q} is allow-listed but hashes nothing" for rel, names in allowed.items()
            if rel in sources for q in sorted(names) if (rel, q) not in used]
    return bad


# (d) imports run downwards: no module imports from a layer above its own ----------------------------

# bottom to top; a module may import its own layer and the ones below. `flops.py` is arithmetic every
# layer shares; `models` loads local LMs for both raters and synth; the CLI calls everything.
LAYERS: list[tuple[str, ...]] = [
    ("winnow.flops", "winnow.pipeline"),
    ("winnow.tokenize",),
    ("winnow.proxy", "winnow.report"),
    ("winnow.models",),
    ("winnow.raters",),
    ("winnow.filters", "winnow.synth"),
    ("winnow.cli", "winnow.__main__"),
]


def layer_of(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


# the stage registry names stage classes as 'module:Class' strings, imported only when a config asks:
# the one by-name lookup a lower layer may hold (the engine still imports no stage: check (a))
BY_NAME = {"pipeline/registry.py"}


def layer_violations(sources: dict[str, str]) -> list[str]:
    bad = []
    for rel, text in sources.items():
        if rel in BY_NAME:
            continue
        module = "winnow." + rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        own = layer_of(module)
        if own is None:
            continue
        package = module if rel.endswith("__init__.py") else module.rsplit(".", 1)[0]
        for name in _imported_modules(ast.parse(text), package):
            target = layer_of(name)
            if target is not None and target > own:
                bad.append(f"{rel} ({LAYERS[own][0]}) imports {name} ({LAYERS[target][0]}), a layer above it")
    return sorted(set(bad))


# the tests -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def package() -> dict[str, str]:
    return {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_engine_imports_no_stage(package):
    assert all(m in package for m in ENGINE_MODULES)
    assert engine_violations({m: package[m] for m in ENGINE_MODULES}) == []


def test_flop_formulas_live_in_one_module(package):
    assert FLOP_MODULE in package
    assert flop_violations(package) == []


def test_id_hashes_go_through_the_helper(package):
    assert hash_violations(package) == []


def test_imports_run_downwards(package):
    assert all(layer_of("winnow." + rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")) is not None
               for rel in package if rel not in ("__init__.py",)), "a module outside every layer"
    assert layer_violations(package) == []


def test_the_checks_can_fail(package):
    engine = package["pipeline/engine.py"]
    assert engine_violations({"pipeline/engine.py": engine + "\nfrom winnow.filters.quality import QualityStage\n"})
    assert engine_violations({"pipeline/run.py": "def f():\n    from ..raters import scorer\n"})
    assert engine_violations({"pipeline/stage.py": "import importlib\nimportlib.import_module('winnow.synth.rephrase')\n"})

    planted = {
        "raters/new.py": "def my_flops(n):\n    return 6 * n\n",                          # a named formula
        "synth/new.py": "x = {'generation_flops': [2.0 * n * t for n, t in pairs]}\n",     # a formula in place
        "proxy/new.py": "class A:\n    def f(self, n):\n        self.flops += n * 2\n",
    }
    found = flop_violations({**package, **planted})
    assert all(any(rel in v for v in found) for rel in planted), found
    assert flop_violations(package, {**FLOP_NAMED_FUNCTIONS, "raters/x.py": {"gone"}})   # stale entry

    ids = "import xxhash\n\ndef pick(ids, seed):\n    return [xxhash.xxh64_intdigest(i.encode(), seed=seed) for i in ids]\n"
    assert hash_violations({**package, "filters/new.py": ids})
    assert hash_violations({**package, "proxy/new.py": "from xxhash import xxh3_64_intdigest\n"})
    assert layer_violations({"pipeline/verify.py": "from winnow.tokenize.writers import TOKENS\n"})
    assert layer_violations({"raters/x.py": "def f():\n    from winnow.synth.backend import open_backend\n"})
    assert layer_violations({"pipeline/faults.py": "CMD = 'winnow.cli'\n"})      # a module named in a string
    assert not layer_violations({"filters/x.py": "from winnow.raters.scorer import Scorer\n"})   # downwards
    moved = package["filters/minhash_dedup.py"].replace("def _word_hashes", "def _renamed")
    assert hash_violations({**package, "filters/minhash_dedup.py": moved})   # the allow-list is per function
