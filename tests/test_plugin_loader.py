"""The one plugin loader: a second load in the same process is a no-op (TensorRT stand-in).

TensorRT fails the second ``load_library`` of a plugin library in one process ("already
registered"); the engine build and the runtime share ``ops.cross_attention.plugin``. TensorRT is
not installable here, so its registry is a stand-in that fails like TensorRT on a second load.
"""

from __future__ import annotations

import pytest

from slowfast_trt.ops.cross_attention import plugin
from slowfast_trt.ops.cross_attention.contract import op_schema


class FakeRegistry:
    def __init__(self, registered=False):
        self.loads, self.registered = [], registered

    def load_library(self, path):
        if path in self.loads:
            raise RuntimeError(f"{path}: plugin creator already registered")
        self.loads.append(path)
        self.registered = True
        return object()

    def get_creator(self, name, version, namespace):
        schema = op_schema()
        key_matches = (name, version, namespace) == (schema["name"], schema["plugin_version"], schema["plugin_namespace"])
        return object() if self.registered and key_matches else None


class FakeTensorRT:
    def __init__(self, registry):
        self._registry = registry

    def get_plugin_registry(self):
        return self._registry


@pytest.fixture(autouse=True)
def fresh_bookkeeping(monkeypatch):
    monkeypatch.setattr(plugin, "_LOADED", {})


@pytest.fixture()
def library(tmp_path):
    path = tmp_path / "libslowfast_trt_plugin.so"
    path.write_bytes(b"")
    return path


def test_a_second_load_is_a_no_op(library):
    registry = FakeRegistry()
    trt = FakeTensorRT(registry)
    assert plugin.load_plugin_library(trt, path=library) == library.resolve()
    assert plugin.load_plugin_library(trt, path=library) == library.resolve()
    assert registry.loads == [str(library.resolve())]
    assert plugin.loaded_plugin_libraries() == (str(library.resolve()),)


def test_the_build_step_and_the_runtime_share_the_loader(library, monkeypatch):
    """export.trt_build and runtime.trt_engine both go through the one loader."""
    from slowfast_trt.runtime import trt_engine

    registry = FakeRegistry()
    trt = FakeTensorRT(registry)
    monkeypatch.setattr(plugin, "plugin_library_path", lambda: library)
    plugin.load_plugin_library(trt)  # what build_engines calls
    trt_engine.load_plugin_library(trt)  # what every TrtEngine calls
    trt_engine.load_plugin_library(trt)
    assert registry.loads == [str(library.resolve())]


def test_a_same_library_through_another_path_loads_once(library, tmp_path):
    link = tmp_path / "link.so"
    link.symlink_to(library)
    registry = FakeRegistry()
    plugin.load_plugin_library(FakeTensorRT(registry), path=library)
    plugin.load_plugin_library(FakeTensorRT(registry), path=link)
    assert len(registry.loads) == 1


def test_a_creator_registered_by_other_code_counts_as_loaded(library):
    registry = FakeRegistry(registered=True)  # e.g. trtexec --dynamicPlugins, or user code
    plugin.load_plugin_library(FakeTensorRT(registry), path=library)
    assert registry.loads == []


def test_errors_name_what_to_do(monkeypatch, library):
    from slowfast_trt.runtime.engine import EngineError
    from slowfast_trt.runtime import trt_engine

    monkeypatch.setattr(plugin, "plugin_library_path", lambda: None)
    with pytest.raises(EngineError, match="plugin library was not built; reinstall with CUDA and TensorRT"):
        trt_engine.load_plugin_library(FakeTensorRT(FakeRegistry()))

    class Refusing(FakeRegistry):
        def load_library(self, path):
            return None

    with pytest.raises(ValueError, match="TensorRT could not load the plugin library"):
        plugin.load_plugin_library(FakeTensorRT(Refusing()), path=library)
    assert plugin.loaded_plugin_libraries() == ()  # a failed load is not remembered
