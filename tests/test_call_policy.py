"""The call policy without Beam: Caller driven directly against the emulator and a capture server on
127.0.0.1, checking outcomes, dead letters, deferrals, counts and the bytes sent."""
import gc
import io
import pickle
import threading

import pytest
from PIL import Image

from embed_client import EmbedClient
from embed_client.pacing import Pacer
from embed_emulator import Emulator, EmulatorConfig
from tests.capture_server import CaptureServer, json_response
from tests.helpers import TEST_KEY
from transforms.calling.callers import make_caller
from transforms.calling.engine import Caller, CallStats, QuotaState, WorkerState
from transforms.settings import ApiKeyRejected, CallSettings
from transforms.records import Call, Deferred, Item, Outcome
from transforms.stages.timeline import CallTimes
from transforms.calling.worker_state import acquire_worker_state

DIMS = 512


class CountingPacer:
    """A Pacer that never waits and counts what the policy told it."""

    def __init__(self):
        self.acquired = self.succeeded = 0
        self.limited = []
        self._lock = threading.Lock()

    def acquire(self) -> float:
        with self._lock:
            self.acquired += 1
        return 0.0

    def on_rate_limited(self, retry_after_sec=None, limit_per_minute=None) -> None:
        self.limited.append((retry_after_sec, limit_per_minute))

    def on_success(self) -> None:
        with self._lock:
            self.succeeded += 1


def _settings(base_url, **changes):
    values = dict(base_url=base_url, model="marengo3.0", max_attempts=3, initial_backoff_sec=0.01,
                  max_backoff_sec=0.02, item_deadline_sec=10.0)
    values.update(changes)
    return CallSettings(**values)


def _policy(base_url, pacer=None, quota=None, **changes):
    settings = _settings(base_url, **changes)
    return Caller(settings, EmbedClient(api_key=TEST_KEY, base_url=base_url), pacer or CountingPacer(), quota)


def _text(i, text=None):
    return Item(id=f"t{i}", modality="text", source="m.jsonl", row_number=i, content_hash=f"ht{i}",
                text=text or f"caption {i}")


def _image(i, path):
    return Item(id=f"i{i}", modality="image", source="m.jsonl", row_number=i, content_hash=f"hi{i}", file_path=path)


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "red.png"
    buffer = io.BytesIO()
    Image.new("RGB", (160, 160), (200, 30, 30)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return str(path)


def _vector(value=0.25):
    return [value] * DIMS


def _ok(*modalities):
    body = {"model_name": "marengo3.0"}
    for modality in modalities:
        body[f"{modality}_embedding"] = {"segments": [{"float": _vector()}]}
    return json_response(200, body)


def _modalities(request):
    body = request.body
    return [m for m in ("text", "image") if f'name="{m}"'.encode() in body or f'name="{m}_file"'.encode() in body]


def test_a_packed_call_against_the_emulator_gives_the_clients_vectors(png):
    with Emulator(EmulatorConfig()) as emu:
        pacer = CountingPacer()
        policy = _policy(emu.base_url, pacer)
        copy = _text(9, "a red square")
        first = _text(1, "a red square")
        first.copies = [copy]
        records, stats = policy.run(Call([first, _image(2, png)]))
        served = emu.stats()
        client = EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)
        want_text = client.create("marengo3.0", text="a red square").text_embedding.segments[0].float_
        with open(png, "rb") as f:
            want_image = client.create("marengo3.0", image_file=("red.png", f.read(), "image/png")) \
                .image_embedding.segments[0].float_
    assert all(isinstance(r, Outcome) for r in records)
    assert sorted((r.item.id, r.item.modality) for r in records) == [("i2", "image"), ("t1", "text"), ("t9", "text")]
    by_id = {r.item.id: r for r in records}
    assert by_id["t1"].segments[0][2] == want_text and by_id["t9"].segments[0][2] == want_text  # the copy too
    assert by_id["i2"].segments[0][2] == want_image and len(want_image) == DIMS
    assert (stats.calls, stats.retries, stats.split_calls, stats.items_per_call) == (1, 0, 0, [2])
    assert served["calls_ok"] == 1 and served["items"]["text"] == 1 and served["items"]["image"] == 1
    assert (pacer.acquired, pacer.succeeded, pacer.limited) == (1, 1, [])
    times = CallTimes.from_stats(stats)
    assert sum(c for _, c, _ in times.seconds) == 1 and len(times.latencies_ms) == 1


def test_the_request_carries_the_fields_and_the_files_bytes(png):
    with CaptureServer(lambda req: _ok("text", "image")) as server:
        records, stats = _policy(server.base_url).run(Call([_text(1, "hello there"), _image(2, png)]))
    (request,) = server.requests
    with open(png, "rb") as f:
        data = f.read()
    body = request.normalized_body()
    assert request.path == "/v1.3/embed" and request.headers["x-api-key"] == TEST_KEY
    assert b'name="model_name"\r\n\r\nmarengo3.0\r\n' in body
    assert b'name="text"\r\n\r\nhello there\r\n' in body
    assert b'name="image_file"; filename="red.png"' in body and b"Content-Type: image/png" in body
    assert data in body and body.count(data) == 1
    assert len([r for r in records if isinstance(r, Outcome)]) == 2 and stats.calls == 1


def test_a_400_splits_the_packed_call_and_dead_letters_only_the_bad_item(png):
    def answer(request):
        if "image" in _modalities(request):
            return json_response(400, {"code": "parameter_invalid", "message": "the image is not accepted"})
        return _ok("text")

    with CaptureServer(answer) as server:
        records, stats = _policy(server.base_url).run(Call([_text(1), _image(2, png)]))
    assert [(type(r).__name__, getattr(r, "id", None) or r.item.id) for r in records] == [("Outcome", "t1"),
                                                                                            ("DeadLetter", "i2")]
    letter = records[1]
    assert (letter.code, letter.http_status, letter.attempts, letter.stage) == ("parameter_invalid", 400, 1, "call")
    assert letter.content_hash == "hi2" and letter.row == {"id": "i2", "image_file": png}  # what was sent
    assert [_modalities(r) for r in server.requests] == [["text", "image"], ["text"], ["image"]]
    assert (stats.calls, stats.split_calls, stats.items_per_call, stats.retries) == (3, 1, [2, 1, 1], 0)


@pytest.mark.parametrize("status", [404, 405])
def test_a_404_or_405_on_the_embed_route_is_transient_unsplit_and_counts_towards_the_outage(png, status):
    """The endpoint's answer, not the items': one try, no split, transient letters, one service failure."""
    with CaptureServer(lambda req: json_response(status, {"code": "resource_not_exist", "message": "no"})) as server:
        quota = QuotaState(None, outage_after=5)
        records, stats = _policy(server.base_url, quota=quota).run(Call([_text(1), _image(2, png)]))
    assert [(r.id, r.code, r.http_status, r.as_dict()["kind"]) for r in records] == [
        ("t1", "endpoint_not_found", status, "transient"), ("i2", "endpoint_not_found", status, "transient")]
    assert (len(server.requests), stats.split_calls, quota.service_failures) == (1, 0, 1)


def test_a_5xx_is_retried_and_the_attempts_are_counted():
    answers = iter([json_response(503, {"message": "busy"}), json_response(500, {"message": "oops"})])
    with CaptureServer(lambda req: next(answers, _ok("text"))) as server:
        pacer = CountingPacer()
        quota = QuotaState(None, outage_after=5)
        records, stats = _policy(server.base_url, pacer, quota).run(Call([_text(1)]))
    (outcome,) = records
    assert isinstance(outcome, Outcome) and outcome.attempts == 3
    assert (stats.calls, stats.retries, len(server.requests)) == (3, 2, 3)
    assert pacer.acquired == 3 and pacer.succeeded == 1
    assert quota.service_failures == 0 and quota.stopped is None  # the success reset the outage count


def test_a_call_that_keeps_failing_is_a_transient_dead_letter_and_an_outage_stops_calling():
    with CaptureServer(lambda req: json_response(502, {"message": "bad gateway"})) as server:
        quota = QuotaState(None, outage_after=4)
        policy = _policy(server.base_url, quota=quota, max_attempts=3)
        first, _ = policy.run(Call([_text(1)]))
        second, _ = policy.run(Call([_text(2)]))
        sent = len(server.requests)
        third, stats = policy.run(Call([_text(3)]))
    assert [(r.code, r.attempts) for r in first] == [("server_error", 3)]
    # the 4th failure in a row stops calling: the rest of that call and everything after is deferred
    assert [(type(r).__name__, r.reason) for r in second] == [("Deferred", "service_unavailable")]
    assert quota.stopped == "service_unavailable" and sent == 4
    assert [(type(r).__name__, r.reason) for r in third] == [("Deferred", "service_unavailable")]
    assert len(server.requests) == sent and stats.calls == 0  # nothing more was sent


def test_a_spent_daily_quota_defers_without_calling_again():
    with Emulator(EmulatorConfig(requests_per_day=1)) as emu:
        quota = QuotaState(None)
        policy = _policy(emu.base_url, quota=quota)
        ok, _ = policy.run(Call([_text(1)]))
        spent, spent_stats = policy.run(Call([_text(2)]))
        requests = emu.stats()["requests"]
        later, later_stats = policy.run(Call([_text(3)]))
        assert emu.stats()["requests"] == requests == 2
    assert isinstance(ok[0], Outcome)
    assert [(type(r).__name__, r.reason) for r in spent] == [("Deferred", "quota_exhausted")]
    assert spent[0].resets_at is not None and spent[0].resets_at == quota.resets_at
    assert spent_stats.rate_limited == 1 and spent_stats.calls == 1
    assert [(r.id, r.reason) for r in later] == [("t3", "quota_exhausted")] and later_stats.calls == 0


def test_the_call_budget_is_shared_by_every_policy_of_a_worker_state():
    with Emulator(EmulatorConfig()) as emu:
        settings = _settings(emu.base_url, max_calls=3, run_id="budget")
        state = WorkerState.for_settings(settings, CountingPacer())
        client = EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)
        v1 = make_caller("v1", settings, client, state)
        v2 = make_caller("v2", settings, client, state)
        records = [r for i in range(4) for policy in (v1, v2) for r in policy.run(Call([_text(i)]))[0]]
        served = emu.stats()
    assert sum(isinstance(r, Outcome) for r in records) == 3 and served["requests"] == 3
    assert [r.reason for r in records if isinstance(r, Deferred)] == ["max_calls"] * 5
    assert state.quota.calls == 3 and state.quota.stopped == "max_calls"


def test_a_refused_key_raises_and_is_not_retried():
    with CaptureServer(lambda req: json_response(401, {"code": "api_key_invalid", "message": "no"})) as server:
        with pytest.raises(ApiKeyRejected, match="refused the key"):
            _policy(server.base_url).run(Call([_text(1)]))
    assert len(server.requests) == 1


def test_a_file_that_cannot_be_read_is_a_dead_letter_without_a_call(tmp_path):
    with CaptureServer() as server:
        records, stats = _policy(server.base_url).run(Call([_image(1, str(tmp_path / "gone.png"))]))
    assert [(r.code, r.modality) for r in records] == [("unreadable_file", "image")] and stats.calls == 0
    assert server.requests == []


def test_a_response_for_the_wrong_shape_is_malformed_and_retried():
    answers = iter([json_response(200, {"model_name": "marengo3.0",
                                        "text_embedding": {"segments": [{"float": [0.1, 0.2]}]}})])
    with CaptureServer(lambda req: next(answers, _ok("text"))) as server:
        records, stats = _policy(server.base_url).run(Call([_text(1)]))
    assert isinstance(records[0], Outcome) and len(records[0].segments[0][2]) == DIMS
    assert (stats.calls, stats.retries) == (2, 1)


# ---- per-process state through apache_beam.utils.shared.Shared ------------------------------------------

def test_worker_state_is_one_per_process_and_run_and_the_bucket_one_per_limit():
    settings = CallSettings(base_url="http://127.0.0.1:9/v1.3", model="marengo3.0", run_id="r1", max_calls=8,
                            requests_per_minute=600, max_workers=2)
    state = acquire_worker_state(settings)
    # a copy of the settings, as each unpickled DoFn on a worker holds its own
    assert acquire_worker_state(pickle.loads(pickle.dumps(settings))) is state
    assert state.quota.max_calls == 4  # this process's share of the run's budget
    other_run = acquire_worker_state(CallSettings(base_url="http://127.0.0.1:9/v1.3", model="marengo3.0",
                                                  run_id="r2", requests_per_minute=600, max_workers=2))
    assert other_run is not state and other_run.quota is not state.quota
    assert other_run.pacer is state.pacer  # the account's limit outlives a run
    slower = acquire_worker_state(CallSettings(base_url="http://127.0.0.1:9/v1.3", model="marengo3.0",
                                               run_id="r1", requests_per_minute=60, max_workers=2))
    assert slower.pacer is not state.pacer and isinstance(state.pacer, Pacer)


def test_worker_state_outlives_a_dofn_torn_down_per_bundle_then_makes_room():
    """Runners that set a DoFn up per bundle hold no state between bundles: the last few states stay alive."""
    from transforms.calling.worker_state import RECENT_STATES

    settings = CallSettings(base_url="http://127.0.0.1:9/v1.3", model="marengo3.0", run_id="held", max_calls=5)
    state = acquire_worker_state(settings)
    assert state.quota.take_call()
    del state  # the bundle's DoFn is torn down
    gc.collect()
    assert acquire_worker_state(settings).quota.calls == 1  # the next bundle goes on with the same budget
    for run in range(RECENT_STATES):  # later runs push it out
        acquire_worker_state(CallSettings(base_url="http://127.0.0.1:9/v1.3", model="marengo3.0", run_id=f"r{run}"))
    gc.collect()
    assert acquire_worker_state(settings).quota.calls == 0  # nobody held it: a fresh state


def test_stats_of_a_call_that_was_not_made_give_no_timeline():
    assert CallTimes.from_stats(CallStats()) is None
