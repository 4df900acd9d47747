# FindTensorRT
# ------------
# Finds the TensorRT C++ headers (required) and libnvinfer (optional: the slowfast plugin library is
# loaded by TensorRT through getCreators() and does not link libnvinfer).
#
# Search order: TensorRT_ROOT (CMake or environment variable; <root>/include or <root> itself),
# /usr/include/aarch64-linux-gnu (JetPack), /usr/include/x86_64-linux-gnu (Debian packages),
# /usr/local/TensorRT/include (tarball), /usr/include.
#
# Result variables:
#   TensorRT_FOUND          headers found
#   TensorRT_INCLUDE_DIR    directory holding NvInfer.h
#   TensorRT_VERSION        MAJOR.MINOR.PATCH parsed from NvInferVersion.h
#   TensorRT_LIBRARY        libnvinfer if found (informational only)
# Imported target:
#   TensorRT::headers       INTERFACE target carrying the include directory

set(_trt_roots "")
if(TensorRT_ROOT)
  list(APPEND _trt_roots "${TensorRT_ROOT}")
endif()
if(DEFINED ENV{TensorRT_ROOT})
  list(APPEND _trt_roots "$ENV{TensorRT_ROOT}")
endif()

# Re-search when the roots change between configures of the same build directory.
if(NOT "${_trt_roots}" STREQUAL "${_TensorRT_ROOTS_SEARCHED}")
  unset(TensorRT_INCLUDE_DIR CACHE)
  unset(TensorRT_LIBRARY CACHE)
  set(_TensorRT_ROOTS_SEARCHED "${_trt_roots}" CACHE INTERNAL "TensorRT roots of the last search")
endif()

find_path(TensorRT_INCLUDE_DIR
  NAMES NvInfer.h NvInferVersion.h
  HINTS ${_trt_roots}
  PATH_SUFFIXES include
  PATHS /usr/include/aarch64-linux-gnu /usr/include/x86_64-linux-gnu /usr/local/TensorRT/include /usr/include
  NO_CMAKE_SYSTEM_PATH)

find_library(TensorRT_LIBRARY
  NAMES nvinfer
  HINTS ${_trt_roots}
  PATH_SUFFIXES lib lib64
  PATHS /usr/lib/aarch64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/local/TensorRT/lib)

set(TensorRT_VERSION "")
if(TensorRT_INCLUDE_DIR AND EXISTS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h")
  file(READ "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _trt_version_header)
  foreach(_part MAJOR MINOR PATCH)
    # TensorRT <= 10.10: "#define NV_TENSORRT_MAJOR 10"; later: "#define TRT_MAJOR_ENTERPRISE 10".
    if(_trt_version_header MATCHES "#define[ \t]+NV_TENSORRT_${_part}[ \t]+([0-9]+)")
      set(_trt_${_part} "${CMAKE_MATCH_1}")
    elseif(_trt_version_header MATCHES "#define[ \t]+TRT_${_part}_ENTERPRISE[ \t]+([0-9]+)")
      set(_trt_${_part} "${CMAKE_MATCH_1}")
    else()
      set(_trt_${_part} "0")
    endif()
  endforeach()
  set(TensorRT_VERSION "${_trt_MAJOR}.${_trt_MINOR}.${_trt_PATCH}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT
  REQUIRED_VARS TensorRT_INCLUDE_DIR
  VERSION_VAR TensorRT_VERSION)

if(TensorRT_FOUND AND NOT TARGET TensorRT::headers)
  add_library(TensorRT::headers INTERFACE IMPORTED)
  set_target_properties(TensorRT::headers PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}")
endif()

mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_LIBRARY)
