#!/usr/bin/env bash
# Compile-check the TensorRT glue of slowFastCrossAttn against one TensorRT include directory.
#
# Usage: plugins/slowFastCrossAttn/check_headers.sh <tensorrt_include_dir> [build_dir]
#
#   1. configures the project with TensorRT_ROOT=<dir> (one CUDA arch, fast) -> generated schema header;
#   2. -fsyntax-only of the glue (Plugin.cpp, PluginCreator.cpp) with -Wall -Wextra -Werror (TensorRT headers
#      as -isystem, exactly the build's flags);
#   3. builds libslowfast_trt_plugin.so, linked with -Wl,--no-undefined against cudart only;
#   4. checks the library: exports getCreators/setLoggerFinder, needs no libnvinfer symbol or library.
# Needs nvcc, cmake >= 3.24, ninja and a C++17 compiler; no GPU and no TensorRT library.
set -euo pipefail

if [[ $# -lt 1 || ! -f "$1/NvInfer.h" ]]; then
  echo "usage: $0 <tensorrt_include_dir containing NvInfer.h> [build_dir]" >&2
  exit 2
fi
include_dir=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${2:-$(mktemp -d /tmp/slowfast_check_headers.XXXXXX)}
mkdir -p "$build"
python=$(command -v python3 || command -v python)
pybind11_dir=$("$python" -m pybind11 --cmakedir 2>/dev/null || true)

echo "== configure ($build)"
cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSLOWFAST_CUDA_ARCHS=80 \
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DTensorRT_ROOT="$include_dir" \
  ${pybind11_dir:+-Dpybind11_DIR="$pybind11_dir"} > "$build/configure.log"
found=$(sed -n 's/^TensorRT_INCLUDE_DIR:PATH=//p' "$build/CMakeCache.txt")
if [[ "$found" != "$include_dir" && "$found" != "$include_dir/include" ]]; then
  echo "FindTensorRT picked '$found', not '$include_dir'" >&2
  exit 1
fi
echo "== syntax check of the glue with -Wall -Wextra -Werror (the build's own compile commands)"
"$python" - "$build/compile_commands.json" > "$build/syntax_check.sh" <<'PY'
import json, shlex, sys
for entry in json.load(open(sys.argv[1])):
    if "/slowFastCrossAttnPlugin" not in entry["file"]:
        continue  # slowFastCrossAttnPlugin.cpp and slowFastCrossAttnPluginCreator.cpp
    args = shlex.split(entry["command"])
    out = args.index("-o")
    args = args[:out] + args[out + 2:]  # drop "-o file"
    args = [a for a in args if a != "-c"] + ["-fsyntax-only", "-Wall", "-Wextra", "-Werror"]
    print(f"echo '   {entry['file']}' && (cd {shlex.quote(entry['directory'])} && {shlex.join(args)})")
PY
[[ $(grep -c fsyntax-only "$build/syntax_check.sh") -eq 2 ]] || { echo "plugin sources not found in compile_commands.json" >&2; exit 1; }
bash -e "$build/syntax_check.sh"

echo "== build and link (-Wl,--no-undefined, no libnvinfer)"
cmake --build "$build" --target slowfast_trt_plugin > "$build/build.log" || { tail -40 "$build/build.log"; exit 1; }
lib="$build/plugins/slowFastCrossAttn/libslowfast_trt_plugin.so"

echo "== symbols of $(basename "$lib")"
exports=$(nm -D --defined-only "$lib" | awk '$2 == "T" {print $3}')
for symbol in getCreators setLoggerFinder; do
  grep -qx "$symbol" <<< "$exports" || { echo "missing export $symbol" >&2; exit 1; }
done
if nm -D --undefined-only "$lib" | c++filt | grep -E "nvinfer|createInfer|getPluginRegistry|getLogger"; then
  echo "the plugin needs libnvinfer symbols (listed above)" >&2
  exit 1
fi
if ldd "$lib" | grep -E "libnvinfer|libcudart\.so"; then
  echo "the plugin links a shared library it must not need (listed above)" >&2
  exit 1
fi
version=""
for part in MAJOR MINOR PATCH; do
  value=$(sed -n -E "s/^#define (NV_TENSORRT_${part}|TRT_${part}_ENTERPRISE)[[:space:]]+([0-9]+).*/\2/p" \
    "$include_dir/NvInferVersion.h" | head -1)
  version="${version:+$version.}${value:-?}"
done
echo "OK: TensorRT $version headers in $include_dir"
