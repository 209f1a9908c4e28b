"""The CUDA kernels' index arithmetic and tiling, checked on the CPU (no GPU needed).

cpp/cuda/check_maps.cpp multiplies out the implicit-GEMM index maps of conv_maps.cuh and
compares them with a direct convolution; cpp/cuda/check_tiles.cpp runs the tile engine of
tiled_gemm.cuh itself on host threads (one std::thread per CUDA thread) on those maps.  Both
include geometries whose output is smaller than the natural size (the transposed
convolution's adjoint when stride <= output_padding < dilation).  Both
are built here with the system C++ compiler and the CUDA headers, so a broken map or tile
loop fails on any machine with a CUDA toolkit, not only where a GPU is present.  Skipped
where no C++20 compiler or no CUDA headers are found.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "cpp" / "cuda"


def _cuda_include() -> Path | None:
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_runtime.h").is_file():
            return Path(c) / "include"
    return None


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def _build_and_run(source: str, tmp_path: Path) -> str:
    include, cxx = _cuda_include(), _compiler()
    if include is None:
        pytest.skip("no CUDA headers (cuda_runtime.h) found: set CUDA_HOME")
    if cxx is None:
        pytest.skip("no C++ compiler found")
    exe = tmp_path / Path(source).stem
    cmd = [cxx, "-std=c++20", "-O1", "-pthread", "-w", f"-I{ROOT / 'cpp'}", f"-I{include}",
           str(CUDA_DIR / source), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0 and "c++20" in built.stderr:
        pytest.skip(f"{cxx} does not support C++20: {built.stderr[:200]}")
    assert built.returncode == 0, f"building {source} failed:\n{built.stderr[-3000:]}"
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, f"{source} reported failures:\n{ran.stdout[-3000:]}"
    return ran.stdout


def _smaller_outputs(out: str) -> int:
    """How many geometries had an output smaller than the natural size (the transposed
    convolution's adjoint when stride <= output_padding < dilation, cpp/conv2d.h)."""
    m = re.search(r"(\d+) with an output smaller than the natural size", out)
    assert m, out
    return int(m.group(1))


def test_implicit_gemm_index_maps_match_direct_convolution(tmp_path):
    out = _build_and_run("check_maps.cpp", tmp_path)
    assert ", 0 failures" in out and "geometries checked" in out
    assert _smaller_outputs(out) > 0, out


def test_tile_engine_on_host_threads_matches_direct_convolution(tmp_path):
    out = _build_and_run("check_tiles.cpp", tmp_path)
    assert ", 0 failures" in out and "geometries checked" in out
    assert _smaller_outputs(out) > 0, out
