"""tegrastats parsing on lines recorded on real Jetson modules, and the runner's behaviour
where the binary is missing. Nothing imitates the binary: the subprocess test runs only on a
Jetson (``tegrastats`` on PATH).

Recorded lines (quoted verbatim from public sources found with the search tool):
* ORIN_NANO_BUSY / ORIN_NANO_IDLE: Jetson Orin Nano 8GB (JetPack 6), from a monitoring agent's
  Go tests (``TestParseJetsonData``, "more valid data" and "orin nano").
* ORIN_NANO_JP6: an Orin Nano 8GB without ``jetson_clocks`` (a README comparing power modes).
* AGX_ORIN: "Real tegrastats line from a Jetson AGX Orin Developer Kit" (rbonghi/jetson_stats,
  ``jtop/tests/test_06_tegra_parse.py``), with three-value rails (now/avg/max).
* THOR: GR3D without a load, from the same file.
"""

from __future__ import annotations

import io
import time

import pytest

from slowfast_trt.tools.tegrastats import Rail, Tegrastats, parse_line, parse_lines, summarize

ORIN_NANO_BUSY = (
    "11-15-2024 08:38:09 RAM 6185/7620MB (lfb 8x2MB) SWAP 851/3810MB (cached 1MB) "
    "CPU [15%@729,11%@729,14%@729,13%@729,11%@729,8%@729] EMC_FREQ 43%@2133 GR3D_FREQ 63%@[621] "
    "NVDEC off NVJPG off NVJPG1 off VIC off OFA off APE 200 cpu@53.968C soc2@52.437C soc0@50.75C "
    "gpu@53.343C tj@53.968C soc1@51.656C VDD_IN 12479mW/12479mW VDD_CPU_GPU_CV 4667mW/4667mW VDD_SOC 2817mW/2817mW"
)
ORIN_NANO_IDLE = (
    "06-18-2025 11:25:24 RAM 3452/7620MB (lfb 25x4MB) SWAP 1518/16384MB (cached 174MB) "
    "CPU [1%@1420,2%@1420,0%@1420,2%@1420,2%@729,1%@729] GR3D_FREQ 0% cpu@50.031C soc2@49.031C soc0@50C "
    "gpu@49.031C tj@50.25C soc1@50.25C VDD_IN 4824mW/4824mW VDD_CPU_GPU_CV 518mW/518mW VDD_SOC 1475mW/1475mW"
)
ORIN_NANO_JP6 = (
    "04-27-2026 14:59:41 RAM 775/7620MB (lfb 3x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [1%@729,0%@729,0%@729,0%@729,0%@729,0%@729] GR3D_FREQ 0% cpu@48.468C soc2@47.531C soc0@48.062C "
    "gpu@48.562C tj@49.156C soc1@49.156C VDD_IN 4761mW/4778mW VDD_CPU_GPU_CV 515mW/501mW VDD_SOC 1428mW/1428mW "
)
AGX_ORIN = (
    "07-25-2026 09:08:28 RAM 20642/62817MB (lfb 1x2MB) "
    "CPU [23%@2201,10%@2201,4%@2201,14%@2201,30%@2201,18%@2201,10%@2201,10%@2201,33%@2201,7%@2201,5%@2201,27%@2201] "
    "EMC_FREQ 3%@3199 GR3D_FREQ 12%@[1300,1300] NVENC0 off NVDEC0 off NVJPG0 off NVJPG1 off VIC off OFA off "
    "NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 "
    "cpu@52.968C/52.968C soc2@48.406C/48.406C soc0@49.531C/49.531C gpu@47.625C/47.625C "
    "VDD_GPU_SOC 5139mW/5139mW/5139mW VDD_CPU_CV 3268mW/3268mW/3268mW VIN_SYS_5V0 5500mW/5500mW/5500mW"
)
THOR = "RAM 4722/7844MB (lfb 1x512kB) EMC_FREQ 2%@1866 GR3D_FREQ @[1000,1000,1000] APE 150"


def test_orin_nano_line():
    s = parse_line(ORIN_NANO_BUSY)
    assert s.timestamp == "11-15-2024 08:38:09"
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (6185, 7620, 851, 3810)
    assert s.cpu_load == (15, 11, 14, 13, 11, 8) and s.cpu_freq_mhz == (729,) * 6
    assert (s.emc_load, s.emc_freq_mhz, s.gpu_load, s.gpu_freq_mhz) == (43, 2133, 63, (621,))
    assert s.temperatures["tj"] == 53.968 and s.temperatures["soc0"] == 50.75 and len(s.temperatures) == 6
    assert s.rails == {"VDD_IN": Rail(12479, 12479), "VDD_CPU_GPU_CV": Rail(4667, 4667), "VDD_SOC": Rail(2817, 2817)}
    assert s.module_power_mw == 12479


def test_idle_orin_nano_lines():
    idle, jp6 = parse_line(ORIN_NANO_IDLE), parse_line(ORIN_NANO_JP6)
    assert idle.gpu_load == 0 and idle.gpu_freq_mhz == () and idle.emc_load is None
    assert idle.cpu_freq_mhz == (1420, 1420, 1420, 1420, 729, 729) and idle.temperatures["soc0"] == 50.0
    assert jp6.rails["VDD_IN"] == Rail(4761, 4778) and jp6.module_power_mw == 4761  # instantaneous, not the average


def test_agx_orin_line_three_value_rails():
    s = parse_line(AGX_ORIN)
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb) == (20642, 62817, None)
    assert len(s.cpu_load) == 12 and (s.emc_freq_mhz, s.gpu_load, s.gpu_freq_mhz) == (3199, 12, (1300, 1300))
    assert s.temperatures == {"cpu": 52.968, "soc2": 48.406, "soc0": 49.531, "gpu": 47.625}
    assert s.rails["VDD_CPU_CV"] == Rail(3268, 3268, 3268)
    assert s.module_power_mw == 5139 + 3268 + 5500  # AGX Orin has no VDD_IN rail


def test_gr3d_without_load_and_cores_off():
    s = parse_line(THOR)
    assert s.gpu_load is None and s.gpu_freq_mhz == (1000, 1000, 1000) and s.module_power_mw is None
    s = parse_line("RAM 123/4096MB CPU [1%@102,off,3%] GR3D_FREQ 37%@921")
    assert s.cpu_load == (1, None, 3) and s.cpu_freq_mhz == (102, None, None) and s.gpu_freq_mhz == (921,)


def test_foreign_lines_are_skipped_and_refused():
    with pytest.raises(ValueError, match="not a tegrastats line"):
        parse_line("[sudo] password for jetson:")
    assert len(parse_lines(["", "[sudo] password for jetson:", ORIN_NANO_BUSY, ORIN_NANO_IDLE])) == 2


def test_summary_and_energy():
    samples = parse_lines([ORIN_NANO_IDLE, ORIN_NANO_BUSY, ORIN_NANO_JP6])
    summary = summarize(samples, interval_ms=100)
    assert summary["samples"] == 3 and summary["ram_peak_mb"] == 6185 and summary["gpu_load_max"] == 63
    assert summary["power_peak_mw"] == 12479
    assert summary["energy_j"] == pytest.approx((4824 + 12479 + 4761) * 0.1 / 1000)
    assert summarize([])["power_mean_mw"] is None


def test_runner_consumes_a_stream_and_refuses_without_the_binary():
    runner = Tegrastats(interval_ms=50, binary="tegrastats-not-installed")
    runner.consume(io.StringIO("\n".join([ORIN_NANO_BUSY, "garbage", AGX_ORIN]) + "\n"))
    assert [s.ram_total_mb for s in runner.samples] == [7620, 62817]
    assert Tegrastats.available("tegrastats-not-installed") is None
    with pytest.raises(ValueError, match="not found on PATH"):
        runner.start()
    assert runner.stop() == runner.samples  # stopping a runner that never started is harmless
    with pytest.raises(ValueError, match="interval_ms"):
        Tegrastats(interval_ms=0)


@pytest.mark.skipif(Tegrastats.available() is None, reason="needs a Jetson (tegrastats on PATH)")
def test_real_tegrastats_subprocess():
    with Tegrastats(interval_ms=100) as stats:
        time.sleep(1.0)
    assert stats.samples and stats.samples[-1].ram_total_mb


def test_bench_fields_from_recorded_lines():
    from slowfast_trt.tools.bench import FIELDS, tegra_fields

    fields = tegra_fields(parse_lines([ORIN_NANO_IDLE, ORIN_NANO_BUSY, ORIN_NANO_JP6]))
    assert fields["power_w_mean"] == pytest.approx((4824 + 12479 + 4761) / 3 / 1000)
    assert fields["gpu_load_mean"] == pytest.approx(63 / 3) and fields["ram_mb_peak"] == 6185
    agx = tegra_fields(parse_lines([AGX_ORIN]))
    assert agx["power_w_mean"] == pytest.approx((5139 + 3268 + 5500) / 1000) and agx["gpu_load_mean"] == 12
    assert tegra_fields(parse_lines([THOR]))["power_w_mean"] is None  # no rails (needs root on some images)
    assert tegra_fields(None) == tegra_fields([]) == {"power_w_mean": None, "gpu_load_mean": None, "ram_mb_peak": None}
    assert set(fields) <= set(FIELDS)
