"""The layers of docs/design.md: scoring, report, corpora and the data tables import without torch.

import-linter (`lint-imports`, run by .ci/run) checks the static imports; this test checks the running truth:
every such module imports in a fresh interpreter where torch, torchaudio and speechbrain cannot be imported."""
import pkgutil
import subprocess
import sys

import pytest

import spkcausal

# The data layer's torch modules: the training loaders and samplers (everything else in data/ is torch-free).
TORCH_DATA = {"spkcausal.data.dataset", "spkcausal.data.samplers", "spkcausal.data.shardstream"}
TORCH_FREE_PACKAGES = ("spkcausal.data", "spkcausal.scoring", "spkcausal.results", "spkcausal.report",
                       "spkcausal.corpora")


def torch_free_modules() -> list[str]:
    """Every module of the torch-free packages, except the data layer's loaders."""
    names = []
    for pkg in TORCH_FREE_PACKAGES:
        mod = __import__(pkg, fromlist=["_"])
        names.append(pkg)
        names += [m.name for m in pkgutil.iter_modules(mod.__path__, pkg + ".") if m.name not in TORCH_DATA]
    return names


# A finder that refuses torch (sys.modules[name] = None would break scipy, which looks torch up there).
BLOCK = """import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchaudio', 'speechbrain'):
            raise ImportError('torch is blocked in this test: ' + name)
sys.meta_path.insert(0, _NoTorch())
"""


def test_the_list_covers_every_layer_module():
    names = torch_free_modules()
    assert "spkcausal.scoring.metrics" in names and "spkcausal.data.trialio" in names
    assert not TORCH_DATA & set(names)
    assert len(names) >= 25, names


@pytest.mark.parametrize("pkg", TORCH_FREE_PACKAGES)
def test_torch_free_layers_import_without_torch(pkg):
    mods = [m for m in torch_free_modules() if m == pkg or m.startswith(pkg + ".")]
    code = BLOCK + "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
    code += "assert 'torch' not in sys.modules\nprint('imported')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "imported" in out.stdout


def test_the_block_really_blocks_torch():
    code = BLOCK + "import spkcausal.nn.heads\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "torch" in out.stderr


def test_package_root_stays_light():
    code = BLOCK + "import spkcausal\nassert spkcausal.__version__\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert spkcausal.__all__ == ["SpeakerModel", "load_model", "set_threshold"]
