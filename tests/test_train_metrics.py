"""metrics.jsonl across restarts: a resume drops the records it is about to log again, a fresh start
(no checkpoint was written) drops an earlier attempt's records."""

from eve_vlm.train.metrics import MetricsWriter, read_metrics


def _attempt(run_dir, start_step, steps):
    writer = MetricsWriter(str(run_dir), start_step, tensorboard=False)
    if start_step == 0:
        writer.log({"step": 0, "eval_loss": 2.0})
    for step in steps:
        writer.log({"step": step, "loss": 1.0 / step})
    writer.file.close()


def test_resume_keeps_records_up_to_the_checkpoint_step(tmp_path):
    _attempt(tmp_path, 0, range(1, 8))  # killed after step 7, checkpoint at step 5
    _attempt(tmp_path, 5, range(6, 10))
    assert [r["step"] for r in read_metrics(str(tmp_path))] == list(range(10))


def test_a_fresh_restart_does_not_duplicate_the_earlier_attempt(tmp_path):
    _attempt(tmp_path, 0, range(1, 4))  # killed before its first checkpoint
    _attempt(tmp_path, 0, range(1, 6))
    assert [r["step"] for r in read_metrics(str(tmp_path))] == list(range(6))


def test_tensorboard_drops_the_earlier_attempt_too(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for start_step, steps in ((0, range(1, 4)), (0, range(1, 6)), (2, range(3, 5))):
        writer = MetricsWriter(str(tmp_path), start_step)
        for step in steps:
            writer.log({"step": step, "loss": 1.0 / step})
        writer.tb.close()
        writer.file.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
