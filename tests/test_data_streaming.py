import gc
import time

from eve_vlm.data.llava import LlavaDataset, parse_record, scan

N = 1_000_000


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_one_million_lines_stream_in_bounded_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(N):
            f.write(f'{{"id": "s{i}", "conversations": [{{"from": "human", "value": "What is {i} + 1?"}}, '
                    f'{{"from": "gpt", "value": "{i + 1}"}}]}}\n')
    gc.collect()
    before, t = rss_mb(), time.perf_counter()
    n = tokens = 0
    peak = before
    for offset, raw in scan(str(path)):
        record = parse_record(raw, None, str(offset))
        n += 1
        tokens += len(record["messages"][1]["content"])
        if n % 50_000 == 0:
            peak = max(peak, rss_mb())
    peak_growth = peak - before
    seconds = time.perf_counter() - t
    assert n == N and tokens == sum(len(str(i + 1)) for i in range(N))
    assert peak_growth < 100, f"RSS grew {peak_growth:.0f} MB while streaming"
    # the map-style index: 12 bytes a record, not the records
    ds = LlavaDataset(str(path))
    index_growth = rss_mb() - before
    assert len(ds) == N and ds[N - 1]["id"] == f"s{N - 1}" and index_growth < 100
    print(f"\n{N} records streamed in {seconds:.1f} s ({N / seconds:,.0f}/s), RSS +{peak_growth:.1f} MB; "
          f"with offset index +{index_growth:.1f} MB")
