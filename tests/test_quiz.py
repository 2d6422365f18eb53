"""Real or generated?: the answers database, the score's interval, the rounds and their limits, the pool of generated
patches, the Hub copy, the report command, the figures, and the page (AppTest), which must not give the side away."""
from __future__ import annotations

import json
import random
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from ddpm.quiz import (HUB_EXPORTED_KEY, MIGRATIONS, SIDES, AlreadyAnswered, Answer, AnswerExport, QuizDB, QuizDBError,
                       Score, ScoreTable, default_db_path, hub_sync_from_env, report_markdown, wilson_interval)
from ddpm.serving.quiz_pool import POOL_VISITOR, QuizPool, service_generator
from ddpm.serving.quiz_rounds import (ANSWER_EVERY_S, Quiz, QuizSession, RateLimited, RateLimiter, RoundClosed,
                                      real_index)

NAMES = ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
         "cancer-associated stroma", "colorectal adenocarcinoma epithelium")


def answer(round_id: str = "r1", tissue: int = 0, generated: str = "left", said: str = "left", weights: str = "ab" * 32,
           at: float = 1_800_000_000.0) -> Answer:
    return Answer(round_id, tissue, weights, "dpmpp, 20 steps, guidance 1.5", "val", generated, said, 2.5, at)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Always(random.Random):
    """An rng whose ``choice`` picks the given item whenever it is offered (else the first)."""

    def __init__(self, item) -> None:
        super().__init__(0)
        self.item = item

    def choice(self, seq):
        return self.item if self.item in seq else seq[0]


def patch(value: int) -> np.ndarray:
    return np.full((28, 28, 3), value, np.uint8)


# ---- the score's interval ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("correct, n, low, high", [  # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    (5, 10, 0.2366, 0.7634)])
def test_wilson_interval_matches_newcombes_published_values(correct, n, low, high):
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_knows_nothing_without_answers_and_refuses_impossible_counts():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for bad in ((3, 2), (-1, 4), (1.5, 4)):
        with pytest.raises(ValueError, match="0 ≤ correct ≤ n"):
            wilson_interval(*bad)


def test_a_score_table_adds_tissues_into_the_overall_score_and_says_it_in_words():
    table = ScoreTable.from_outcomes([(0, True), (0, False), (3, True), (3, True)])
    assert table.by_tissue == {0: Score(1, 2), 3: Score(2, 2)} and table.overall == Score(3, 4)
    assert table.overall.describe() == "3 of 4 right (75%, 95% interval 30–95%)"
    assert Score().describe() == "no answers yet" and np.isnan(Score().share)


# ---- the database ----------------------------------------------------------------------------------------------------
def test_a_new_database_has_the_current_layout_a_write_ahead_log_and_a_busy_timeout(tmp_path):
    db = QuizDB(tmp_path / "sub" / "quiz.sqlite3")
    assert db.version == len(MIGRATIONS) == 1
    with sqlite3.connect(db.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [row[1] for row in con.execute("PRAGMA table_info(answers)")]
    assert columns == ["id", "round_id", "tissue", "weights_sha256", "sampling", "real_source", "generated_side",
                       "answer", "correct", "seconds", "answered_at"]
    with db._connection() as con:
        assert con.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000


def test_answers_survive_closing_and_reopening_the_database(tmp_path):
    path = tmp_path / "quiz.sqlite3"
    QuizDB(path).record(answer("r1", tissue=2, generated="right", said="right"))
    QuizDB(path).record(answer("r2", tissue=2, generated="right", said="left"))
    again = QuizDB(path)
    assert again.count() == 2 and again.scores().by_tissue == {2: Score(1, 2)}
    row = again.rows_after(0)[0]
    assert (row["round_id"], row["correct"], row["generated_side"], row["seconds"]) == ("r1", 1, "right", 2.5)


def test_each_round_is_stored_once(tmp_path):
    db = QuizDB(tmp_path / "quiz.sqlite3")
    db.record(answer("same"))
    with pytest.raises(AlreadyAnswered, match="already answered"):
        db.record(answer("same", said="right"))
    assert db.count() == 1


def test_a_row_whose_correct_flag_contradicts_its_sides_is_refused_by_the_schema(tmp_path):
    db = QuizDB(tmp_path / "quiz.sqlite3")
    with pytest.raises(sqlite3.IntegrityError), db._connection() as con:
        con.execute("INSERT INTO answers (round_id, tissue, weights_sha256, sampling, real_source, generated_side, "
                    "answer, correct, seconds, answered_at) VALUES ('x', 0, 'w', 's', 'val', 'left', 'left', 0, 1, 1)")


def test_many_threads_write_at_once_and_every_answer_is_kept(tmp_path):
    path, threads, each = tmp_path / "quiz.sqlite3", 8, 25
    QuizDB(path)
    errors = []

    def write(t: int) -> None:
        db = QuizDB(path)  # every server thread may open it; each call uses its own connection
        try:
            for i in range(each):
                db.record(answer(f"t{t}-{i}", tissue=t % 9, said=SIDES[i % 2]))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    db = QuizDB(path)
    assert errors == [] and db.count() == threads * each
    assert db.scores().overall == Score(threads * ((each + 1) // 2), threads * each)  # "left" is right on even i


def test_a_version_0_file_is_migrated_and_a_later_migration_keeps_the_rows(tmp_path, monkeypatch):
    path = tmp_path / "quiz.sqlite3"
    sqlite3.connect(path).close()  # an empty SQLite file: user_version 0
    db = QuizDB(path)
    assert db.version == 1
    db.record(answer("old"))

    def add_a_column(con):
        con.execute("ALTER TABLE answers ADD COLUMN device TEXT NOT NULL DEFAULT 'cpu'")

    monkeypatch.setattr("ddpm.quiz.MIGRATIONS", [*MIGRATIONS, add_a_column])
    migrated = QuizDB(path)
    assert migrated.version == 2 and migrated.count() == 1
    assert migrated.rows_after(0)[0]["device"] == "cpu"


def test_a_failing_migration_leaves_the_file_at_its_old_version(tmp_path, monkeypatch):
    path = tmp_path / "quiz.sqlite3"
    QuizDB(path).record(answer("kept"))

    def broken(con):
        con.execute("ALTER TABLE answers ADD COLUMN note TEXT")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("ddpm.quiz.MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(QuizDBError, match="cannot be opened"):
        QuizDB(path)
    monkeypatch.undo()
    db = QuizDB(path)
    assert db.version == 1 and "note" not in db.rows_after(0)[0] and db.count() == 1


def test_a_database_from_a_newer_app_is_refused_saying_what_to_do(tmp_path):
    path = tmp_path / "quiz.sqlite3"
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA user_version = 7")
    with pytest.raises(QuizDBError, match="layout version 7, newer than this app knows"):
        QuizDB(path)


def test_a_file_that_is_no_database_is_a_clear_error(tmp_path):
    path = tmp_path / "quiz.sqlite3"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(QuizDBError, match=r"quiz\.sqlite3 cannot be opened .*DDPM_QUIZ_DB"):
        QuizDB(path)


def test_scores_are_filtered_by_the_weights_or_a_prefix_of_their_sha256(tmp_path):
    db = QuizDB(tmp_path / "quiz.sqlite3")
    db.record(answer("a", weights="aa" * 32))
    db.record(answer("b", weights="bb" * 32, said="right"))
    db.record(answer("c", weights="bb" * 32))
    assert db.weights() == [("bb" * 32, 2), ("aa" * 32, 1)]
    assert db.scores("bb" * 32).overall == Score(1, 2) and db.scores("bbbb").overall == Score(1, 2)
    assert db.scores().overall == Score(2, 3) and db.count("aa") == 1


def test_the_default_database_lives_outside_the_app_folder_unless_told(tmp_path):
    assert default_db_path({"DDPM_QUIZ_DB": str(tmp_path / "x.db")}) == tmp_path / "x.db"
    assert default_db_path({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "ddpm" / "quiz.sqlite3"


# ---- rounds, their answer keys and the rate limits ---------------------------------------------------------------
def test_the_rate_limiter_allows_one_answer_per_interval_and_a_number_per_hour():
    clock = Clock()
    limiter = RateLimiter(min_interval_s=1.5, per_hour=3, clock=clock)
    limiter.check("v")
    limiter.note("v")
    clock.now += 1.0
    with pytest.raises(RateLimited, match="one answer every 1.5 s: look again and answer in 0.5 s"):
        limiter.check("v")
    limiter.check("someone else")
    for _ in range(2):
        clock.now += 2.0
        limiter.note("v")
    clock.now += 2.0
    with pytest.raises(RateLimited, match="at most 3 answers an hour"):
        limiter.check("v")
    clock.now += 3600
    limiter.check("v")


def test_the_generated_side_is_drawn_at_random_and_the_view_holds_only_the_pixels(tmp_path):
    quiz = Quiz(QuizDB(tmp_path / "quiz.sqlite3"), rng=random.Random(3))
    generated, real = patch(200), patch(10)
    views = [quiz.new_round(f"v{i}", 4, generated, real, "w", "s", "val") for i in range(200)]
    on_left = sum(v.left[0, 0, 0] == 200 for v in views)
    assert 70 < on_left < 130  # both sides, about as often
    assert set(vars(views[0])) == {"token", "tissue", "left", "right"}
    assert len({v.token for v in views}) == 200


def test_a_round_is_answered_once_by_the_visitor_who_drew_it_and_stored(tmp_path):
    clock = Clock()
    db = QuizDB(tmp_path / "quiz.sqlite3")
    quiz = Quiz(db, rng=Always("right"), clock=clock)
    view = quiz.new_round("me", 5, patch(200), patch(10), "cd" * 32, "dpmpp, 20 steps", "subset")
    assert view.right[0, 0, 0] == 200
    with pytest.raises(RoundClosed):
        quiz.answer("someone else", view.token, "left")
    clock.now += 4.25
    outcome = quiz.answer("me", view.token, "right")
    assert (outcome.correct, outcome.generated_side, outcome.tissue, outcome.seconds) == (True, "right", 5, 4.25)
    clock.now += 10
    with pytest.raises(RoundClosed, match="this round is over"):
        quiz.answer("me", view.token, "left")
    [row] = db.rows_after(0)
    assert (row["round_id"], row["tissue"], row["weights_sha256"], row["real_source"], row["answer"], row["correct"]) == \
        (view.token, 5, "cd" * 32, "subset", "right", 1)
    with pytest.raises(ValueError, match="answer must be one of"):
        quiz.answer("me", quiz.new_round("me", 0, patch(1), patch(2), "w", "s", "val").token, "middle")


def test_answering_too_fast_is_refused_and_the_round_stays_open(tmp_path):
    clock = Clock()
    quiz = Quiz(QuizDB(tmp_path / "quiz.sqlite3"), clock=clock)
    quiz.answer("me", quiz.new_round("me", 0, patch(1), patch(2), "w", "s", "val").token, "left")
    view = quiz.new_round("me", 1, patch(1), patch(2), "w", "s", "val")
    clock.now += ANSWER_EVERY_S / 2
    with pytest.raises(RateLimited):
        quiz.answer("me", view.token, "left")
    clock.now += ANSWER_EVERY_S
    assert quiz.answer("me", view.token, "left").tissue == 1
    assert quiz.db.count() == 2


def test_the_whole_server_stores_a_bounded_number_of_answers_an_hour_whoever_sends_them(tmp_path):
    clock = Clock()
    quiz = Quiz(QuizDB(tmp_path / "quiz.sqlite3"), clock=clock, server_per_hour=3)
    for visitor in ("a", "b", "c"):
        quiz.answer(visitor, quiz.new_round(visitor, 0, patch(1), patch(2), "w", "s", "val").token, "left")
    view = quiz.new_round("d", 0, patch(1), patch(2), "w", "s", "val")
    with pytest.raises(RateLimited, match="this server is taking no more answers for now .at most 3 answers an hour"):
        quiz.answer("d", view.token, "left")
    clock.now += 3600
    view = quiz.new_round("d", 0, patch(1), patch(2), "w", "s", "val")
    assert quiz.answer("d", view.token, "left") and quiz.db.count() == 4


def test_a_visitor_has_one_open_round_and_old_rounds_are_forgotten(tmp_path):
    clock = Clock()
    quiz = Quiz(QuizDB(tmp_path / "quiz.sqlite3"), clock=clock)
    first = quiz.new_round("me", 0, patch(1), patch(2), "w", "s", "val")
    second = quiz.new_round("me", 0, patch(1), patch(2), "w", "s", "val")
    assert quiz.open_rounds == 1
    with pytest.raises(RoundClosed):
        quiz.answer("me", first.token, "left")
    quiz.new_round("you", 0, patch(1), patch(2), "w", "s", "val")
    clock.now += 3601
    with pytest.raises(RoundClosed):
        quiz.answer("me", second.token, "left")
    assert quiz.open_rounds == 0


def test_a_session_turns_refusals_into_a_notice_and_keeps_its_history(tmp_path):
    clock = Clock()
    quiz, session = Quiz(QuizDB(tmp_path / "quiz.sqlite3"), rng=Always("left"), clock=clock), QuizSession()
    session.view = quiz.new_round("me", 2, patch(1), patch(2), "w", "s", "val")
    assert session.answer(quiz, "me", "left").correct and session.notice is None
    assert session.answer(quiz, "me", "right") is None  # already answered: a second click does nothing
    session.next_round()
    session.view = quiz.new_round("me", 2, patch(1), patch(2), "w", "s", "val")
    assert session.answer(quiz, "me", "right") is None and "one answer every" in session.notice
    clock.now += 2
    assert not session.answer(quiz, "me", "right").correct
    assert session.score().by_tissue == {2: Score(1, 2)} and quiz.db.count() == 2


def test_real_patches_of_the_tissue_are_not_repeated_until_all_were_shown():
    labels, seen, rng = np.array([0, 1, 1, 0, 1, 2]), set(), random.Random(0)
    drawn = [real_index(labels, 1, seen, rng) for _ in range(3)]
    assert sorted(drawn) == [1, 2, 4]
    assert real_index(labels, 1, seen, rng) in (1, 2, 4)
    with pytest.raises(ValueError, match="no patch of tissue 7"):
        real_index(labels, 7, seen, rng)


# ---- the pool of generated patches -----------------------------------------------------------------------------------
class StubService:
    """Stands in for SamplingService: records each request and returns patches whose colour is their number."""

    def __init__(self, fail: int = 0) -> None:
        self.requests, self.fail = [], fail
        self.lock = threading.Lock()

    def run(self, visitor, payload, request, work, on_wait, deadline_s, expected_s):
        with self.lock:
            self.requests.append((visitor, payload.key, request, work, deadline_s))
            if self.fail:
                self.fail -= 1
                raise RuntimeError("the sampling worker stopped unexpectedly; please try again")
            start = sum(r[2].n for r in self.requests[:-1])
        return np.stack([patch((start + i) % 256) for i in range(request.n)])


@pytest.fixture
def conditional_checkpoint(tmp_path):
    import torch

    from ddpm.checkpoints import load_local, make_config, save_checkpoint
    from ddpm.schedules import ScheduleConfig
    from ddpm.unet import UNetConfig, build_unet

    torch.manual_seed(0)
    cfg = UNetConfig(architecture="seed", channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), num_classes=9)
    save_checkpoint(tmp_path / "model", build_unet(cfg), make_config(cfg, ScheduleConfig(num_timesteps=10), preset="seed",
                    sampling={"sampler": "dpmpp", "steps": 5, "guidance": 2.5}))
    return load_local(tmp_path / "model")


def stub_pool(checkpoint, service, **kwargs) -> QuizPool:
    from ddpm.serving.sampling_worker import ModelPayload
    from ddpm.serving.server_limits import ServerLimits

    generate = service_generator(service, ModelPayload("key", {}, b""), checkpoint, ServerLimits(), rng=random.Random(0))
    return QuizPool(generate, 9, retry_s=0.01, **kwargs)


def test_the_pool_fills_every_tissue_through_the_sampling_service_with_the_recommended_settings(conditional_checkpoint):
    service = StubService()
    pool = stub_pool(conditional_checkpoint, service, ready_per_tissue=4, batch=9)
    try:
        assert pool.draw(set(), timeout_s=30) is not None
        with pool._cond:
            pool._cond.wait_for(lambda: all(n == 4 for n in pool.ready().values()), timeout=30)
        assert pool.ready() == {c: 4 for c in range(9)} and pool.made == 36
        visitor, key, request, work, deadline = service.requests[0]
        assert (visitor, key, request.kind, request.n, request.classes) == (POOL_VISITOR, "key", "samples", 9, tuple(range(9)))
        assert request.spec == conditional_checkpoint.sampling and work > 0 and deadline >= 30
        assert len({r[2].seed for r in service.requests}) == len(service.requests)  # a fresh seed per request
    finally:
        pool.close()


def test_the_pool_never_gives_one_visitor_the_same_patch_twice_but_shares_patches_across_visitors(conditional_checkpoint):
    service = StubService()
    pool = stub_pool(conditional_checkpoint, service, ready_per_tissue=2, batch=9, max_uses=1000)
    try:
        mine, yours = set(), set()
        first = pool.draw(mine, timeout_s=30)
        with pool._cond:
            pool._cond.wait_for(lambda: sum(pool.ready().values()) == 18, timeout=30)
        drawn = [first] + [pool.draw(mine) for _ in range(17)]
        assert len({p.id for p in drawn}) == 18 and mine == {p.id for p in drawn}
        assert all(p.image[0, 0, 0] == p.id - 1 for p in drawn)  # each id is the patch made for it
        assert pool.draw(mine) is None  # seen them all: no repeat, and one of them makes room for a fresh one
        fresh = pool.draw(mine, timeout_s=30)
        assert fresh is not None and fresh.id > 18
        # another visitor is shown every patch in the pool, those this one saw included, and the one this one has
        # not seen: the refill that brought `fresh` brought a second patch with it (`yours` may draw that one first)
        with pool._cond:
            in_pool = {p.id for patches in pool._ready.values() for p in patches}
        theirs = {pool.draw(yours).id for _ in range(len(in_pool))}
        assert theirs == in_pool and len(theirs & mine) == len(in_pool) - 1  # all but that second one
    finally:
        pool.close()


def test_a_patch_shown_max_uses_times_is_retired_and_replaced(conditional_checkpoint):
    pool = stub_pool(conditional_checkpoint, StubService(), ready_per_tissue=2, batch=1, max_uses=2)
    try:
        with pool._cond:
            pool._cond.wait_for(lambda: sum(pool.ready().values()) == 18, timeout=60)
        first = pool.draw(set())
        again = next(p for p in iter(lambda: pool.draw(set()), None) if p.id == first.id)
        assert again.uses == 2
        assert all(p.id != first.id for patches in pool._ready.values() for p in patches)
        with pool._cond:
            pool._cond.wait_for(lambda: pool.made > 18, timeout=30)
    finally:
        pool.close()


def test_a_failing_refill_is_reported_and_retried(conditional_checkpoint):
    service = StubService(fail=2)
    pool = stub_pool(conditional_checkpoint, service, ready_per_tissue=2, batch=9)
    try:
        got = pool.draw(set(), timeout_s=30)
        assert got is not None and len(service.requests) >= 3 and pool.last_error is None
    finally:
        pool.close()
    failing = stub_pool(conditional_checkpoint, StubService(fail=10**6), ready_per_tissue=2)
    try:
        assert failing.draw(set(), timeout_s=0.5) is None
        assert "stopped unexpectedly" in failing.last_error
    finally:
        failing.close()


def test_a_refill_beyond_the_servers_budget_is_refused_before_it_runs(conditional_checkpoint):
    from ddpm.serving.cost import RequestTooCostlyError
    from ddpm.serving.sampling_worker import ModelPayload
    from ddpm.serving.server_limits import ServerLimits

    service = StubService()
    generate = service_generator(service, ModelPayload("key", {}, b""), conditional_checkpoint,
                                 ServerLimits(max_request_gflop=1e-9))
    with pytest.raises(RequestTooCostlyError, match="allows"):
        generate((0, 1))
    assert service.requests == []


# ---- the copy on the Hub -----------------------------------------------------------------------------------------------
def test_the_export_appends_only_new_answers_and_remembers_where_it_stopped(tmp_path):
    db = QuizDB(tmp_path / "quiz.sqlite3")
    db.record(answer("a"))
    export = AnswerExport(db, tmp_path / "hub")
    assert export() == 1 and export() == 0
    db.record(answer("b"))
    db.record(answer("c", said="right"))
    assert export() == 2
    rows = [json.loads(line) for line in export.path.read_text().splitlines()]
    assert [r["round_id"] for r in rows] == ["a", "b", "c"] and rows[2]["correct"] == 0
    assert db.get_meta(HUB_EXPORTED_KEY) == str(rows[-1]["id"])
    later = AnswerExport(db, tmp_path / "hub")  # a restarted server writes a file of its own, from where it stopped
    db.record(answer("d"))
    assert later() == 1 and later.path != export.path


def test_the_hub_copy_is_off_unless_a_repo_is_set(tmp_path):
    db = QuizDB(tmp_path / "quiz.sqlite3")
    assert hub_sync_from_env(db, {}) == (None, None)
    scheduler, note = hub_sync_from_env(db, {"DDPM_QUIZ_HUB_REPO": "me/answers", "DDPM_QUIZ_HUB_EVERY_MIN": "-1"})
    assert scheduler is None and "must be a number of minutes" in note


def test_answers_are_pushed_to_a_hub_dataset_by_a_commit_scheduler(fake_hub, tmp_path):
    db = QuizDB(tmp_path / "quiz.sqlite3")
    db.record(answer("first"))
    scheduler, note = hub_sync_from_env(db, {"DDPM_QUIZ_HUB_REPO": "me/quiz-answers", "HF_TOKEN": "hf_test",
                                             "DDPM_QUIZ_HUB_EVERY_MIN": "60"})
    try:
        assert note == "answers are copied to the Hub dataset me/quiz-answers every 60 min"
        scheduler.trigger().result(timeout=60)  # one push at a time: this one runs after the scheduler's first
        db.record(answer("second", said="right"))
        scheduler.trigger().result(timeout=60)
    finally:
        scheduler.stop()
    [(name, data)] = fake_hub.repos["me/quiz-answers"].items()
    assert name.startswith("answers-") and name.endswith(".jsonl")
    assert [json.loads(line)["round_id"] for line in data.decode().splitlines()] == ["first", "second"]
    assert fake_hub.private["me/quiz-answers"]
    assert ("POST", "/api/datasets/me/quiz-answers/commit/main") in fake_hub.requests


def test_a_hub_that_cannot_be_reached_leaves_the_quiz_on_its_database(tmp_path, monkeypatch):
    from hub_server import point_hub_client_at, unused_local_url

    point_hub_client_at(monkeypatch, unused_local_url(), tmp_path / "hf")
    scheduler, note = hub_sync_from_env(QuizDB(tmp_path / "quiz.sqlite3"), {"DDPM_QUIZ_HUB_REPO": "me/answers"})
    assert scheduler is None and "answers are not copied to the Hub dataset me/answers" in note and "HF_TOKEN" in note


# ---- the report command --------------------------------------------------------------------------------------------------
def test_quiz_report_prints_the_score_overall_and_by_tissue_with_intervals(tmp_path, capsys):
    from ddpm.cli import main

    db = QuizDB(tmp_path / "quiz.sqlite3")
    for i in range(10):
        db.record(answer(f"a{i}", tissue=0, said="left" if i < 5 else "right", weights="aa" * 32))
    db.record(answer("b", tissue=3, weights="bb" * 32))
    assert main(["quiz-report", "--db", str(db.path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("**Real or generated?** 11 answers in quiz.sqlite3; weights sha256 (answers): "
                          "`aaaaaaaaaaaa…` (10), `bbbbbbbbbbbb…` (1).")
    assert "| **all tissues** | 11 | 6 | 54.5% | 28.0% – 78.7% |" in out
    assert "| adipose | 10 | 5 | 50.0% | 23.7% – 76.3% |" in out  # Newcombe's 5 of 10
    assert "| lymphocytes | 1 | 1 | 100.0% | 20.7% – 100.0% |" in out and "| mucus | 0 | 0 | – | – |" in out
    assert "50% is chance" in out
    assert main(["quiz-report", "--db", str(db.path), "--weights", "BBBB"]) == 0
    assert "| **all tissues** | 1 | 1 |" in capsys.readouterr().out


def test_quiz_report_without_a_database_says_how_one_comes_to_exist_and_creates_none(tmp_path, capsys):
    from ddpm.cli import main

    assert main(["quiz-report", "--db", str(tmp_path / "none.sqlite3")]) == 2
    assert "no quiz database at" in capsys.readouterr().err and not (tmp_path / "none.sqlite3").exists()
    QuizDB(tmp_path / "q.sqlite3").record(answer())
    assert main(["quiz-report", "--db", str(tmp_path / "q.sqlite3"), "--weights", "ff"]) == 2
    assert "no answers about weights starting 'ff'" in capsys.readouterr().err


def test_the_report_reads_what_the_markdown_helper_writes():
    text = report_markdown(ScoreTable({}), NAMES, "heading")
    assert text.splitlines()[0] == "heading" and "| **all tissues** | 0 | 0 | – | – |" in text


# ---- the figures -----------------------------------------------------------------------------------------------------------
def test_a_round_is_one_image_with_both_patches_through_the_same_path_and_identical_labels():
    from ddpm.figures import QUIZ_GAP, quiz_pair_image, quiz_round_figure
    from ddpm.imaging import upscale

    a, b = patch(30), np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    pair = quiz_pair_image(a, b)
    assert pair.shape == (224, 448 + QUIZ_GAP, 3)
    assert np.array_equal(pair[:, :224], upscale(a, 8)) and np.array_equal(pair[:, -224:], upscale(b, 8))
    assert np.array_equal(quiz_pair_image(b, a)[:, :224], pair[:, -224:])  # swapping sides swaps the pixels only
    fig, swapped = quiz_round_figure(a, b).to_plotly_json(), quiz_round_figure(b, a).to_plotly_json()
    [trace] = fig["data"]
    assert trace["type"] == "image" and trace["hoverinfo"] == "skip" and "name" not in trace
    left, right = fig["layout"]["annotations"]
    assert (left["text"], right["text"]) == ("Left", "Right")
    assert {k: v for k, v in left.items() if k not in ("text", "x")} == {k: v for k, v in right.items() if k not in ("text", "x")}
    assert left["x"] + right["x"] == pytest.approx(pair.shape[1])  # placed symmetrically under each patch
    fig["data"][0].pop("source"), swapped["data"][0].pop("source")
    assert fig == swapped
    with pytest.raises(ValueError, match="one shape"):
        quiz_pair_image(a, a[:14])


def test_the_score_figure_shows_everyone_and_you_with_wilson_bars_and_the_chance_line():
    from ddpm.figures import quiz_score_figure

    everyone = ScoreTable({0: Score(5, 10), 3: Score(1, 1)})
    fig = quiz_score_figure(everyone, NAMES, ScoreTable({0: Score(1, 2)})).to_plotly_json()
    crowd, you = fig["data"]
    assert crowd["name"] == "all visitors (11 answers)" and you["name"] == "you (2 answers)"
    assert crowd["x"][0] == pytest.approx(6 / 11) and crowd["x"][1] == 0.5 and crowd["x"][2] is None
    low, high = wilson_interval(5, 10)
    assert crowd["error_x"]["arrayminus"][1] == pytest.approx(0.5 - low) and crowd["error_x"]["array"][1] == pytest.approx(high - 0.5)
    assert fig["layout"]["yaxis"]["ticktext"] == ["all tissues", *NAMES]
    assert [s["x0"] for s in fig["layout"]["shapes"]] == [0.5]
    assert "chance (50%)" in [a["text"] for a in fig["layout"]["annotations"]]
    assert len(quiz_score_figure(everyone, NAMES).to_plotly_json()["data"]) == 1


# ---- the page ------------------------------------------------------------------------------------------------------------
APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def quiz_page(tmp_path, monkeypatch, conditional_checkpoint):
    """Opens the quiz page as a new visitor of an offline server on a tiny tissue-conditional model, the bundled
    subset, and a database in the test's folder."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    for name, value in {"HF_HUB_OFFLINE": "1", "DDPM_MODEL": str(conditional_checkpoint.path), "DDPM_HOSTED": "0",
                        "DDPM_DATA_DIR": str(tmp_path / "no-data"), "DDPM_QUIZ_DB": str(tmp_path / "quiz.sqlite3")}.items():
        monkeypatch.setenv(name, value)
    st.cache_resource.clear()

    def open_page() -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120)
        at.switch_page("pages/quiz.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield open_page
    import pages._shared as shared

    shared.job_registry().shutdown()
    st.cache_resource.clear()  # also closes the pool (its on_release)


def server_quiz() -> Quiz:
    import pages._shared as shared

    return shared._quiz()


def click(at, label: str):
    next(b for b in at.button if b.label == label).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_spec(at, key: str) -> dict:
    found = [c for c in at.get("plotly_chart") if c.key == key]
    assert found, f"no chart {key!r}"
    return json.loads(found[0].proto.spec)


def page_tree(at) -> list:
    """Every block and element of the page, in order, as (position, kind, its message as a dict)."""
    from google.protobuf.json_format import MessageToDict

    out = []

    def walk(node, path):
        proto = getattr(node, "proto", None)
        out.append((path, type(node).__name__, MessageToDict(proto) if proto is not None else None))
        for key, child in getattr(node, "children", {}).items():
            walk(child, (*path, key))

    walk(at._tree, ())
    return out


def test_the_page_shows_one_image_and_two_buttons_and_a_left_click_is_stored_and_scored(quiz_page):
    at = quiz_page()
    assert at.title[0].value == "Real or generated?"
    [image] = chart_spec(at, "quiz_round")["data"]
    assert image["type"] == "image" and image["source"].startswith("data:image/png;base64,")
    assert [b.label for b in at.button] == ["Left", "Right"]
    tissue = at.session_state["quiz"].view.tissue
    assert at.markdown[1].value == f"**Which {NAMES[tissue]} patch is generated?**"
    assert f"Both patches are {NAMES[tissue]}, 28×28 pixels shown 8× larger. The real one is from the bundled subset" \
           in at.caption[0].value and "made by the app's model (dpmpp, 5 steps, guidance 2.5)" in at.caption[0].value
    db = server_quiz().db
    assert db.count() == 0

    at = click(at, "Left")
    [row] = db.rows_after(0)
    assert row["answer"] == "left" and row["correct"] == (row["generated_side"] == "left") and row["real_source"] == "subset"
    said = (at.success or at.info)[0].value
    assert said.startswith("Right: " if row["correct"] else "Not this time: ")
    assert f"the generated patch is on the {row['generated_side']}" in said
    scores_text = next(m.value for m in at.markdown if m.value.startswith("**You**"))
    assert f"**You**: {row['correct']} of 1 right" in scores_text and "**All visitors so far**: " in scores_text
    scores = chart_spec(at, "quiz_scores")
    assert [t["name"] for t in scores["data"]] == ["all visitors (1 answer)", "you (1 answer)"]
    assert [b.label for b in at.button] == ["Next round"]

    at = click(at, "Next round")
    assert [b.label for b in at.button] == ["Left", "Right"] and db.count() == 1
    at = click(at, "Right") if not at.warning else at
    assert at.session_state["quiz"].view is not None


def test_an_answer_too_soon_after_the_last_is_not_counted_and_the_page_says_so(quiz_page):
    at = click(quiz_page(), "Left")
    server_quiz().limiter.min_interval_s = 3600.0  # "too soon" without a timed test
    at = click(click(at, "Next round"), "Right")
    assert "Not counted: one answer every 3600 s" in at.warning[0].value
    assert [b.label for b in at.button] == ["Left", "Right"] and server_quiz().db.count() == 1


def test_nothing_on_the_page_but_the_pixels_tells_which_side_is_generated(quiz_page, monkeypatch):
    """Two visitors get the same generated and real patch, the generated one on the left for the first and on the
    right for the second. With the real patch's pixels made equal to the generated one's, the two pages are the same
    message for message; with the true real patch, only the image (and Streamlit's id of the chart, a hash of it)
    differs."""
    monkeypatch.setattr("random.SystemRandom", lambda: Always(0))  # the pool, the real patch: the same for everyone
    original = Quiz.new_round

    def pages_for_both_sides() -> tuple[list, list]:
        trees = []
        for side in SIDES:
            server_quiz()._rng = Always(side)  # the server's quiz, made before the visitor's first round
            at = quiz_page()
            assert [b.label for b in at.button] == ["Left", "Right"]
            trees.append(page_tree(at))
        return trees

    monkeypatch.setattr(Quiz, "new_round", lambda self, v, t, generated, real, *rest:
                        original(self, v, t, generated, generated.copy(), *rest))
    left, right = pages_for_both_sides()
    assert left == right

    monkeypatch.setattr(Quiz, "new_round", original)
    left, right = pages_for_both_sides()
    differ = [(a[0], a[1]) for a, b in zip(left, right) if a != b]
    assert len(left) == len(right) and len(differ) == 1  # the chart, nothing else
    a, b = (next(node[2] for node in tree if (node[0], node[1]) == differ[0]) for tree in (left, right))
    spec_a, spec_b = json.loads(a.pop("spec")), json.loads(b.pop("spec"))
    assert spec_a["data"][0].pop("source") != spec_b["data"][0].pop("source") and spec_a == spec_b
    assert a.pop("id").endswith("-quiz_round") and b.pop("id").endswith("-quiz_round") and a == b


def test_compare_shows_everyones_score_for_the_weights_in_use_and_how_many_answers_it_rests_on(quiz_page):
    at = click(quiz_page(), "Right")
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    people = chart_spec(at, "cmp_people")
    assert [t["name"] for t in people["data"]] == ["all visitors (1 answer)"]
    assert "People, in Real or generated?: 1 answer about these weights" in "\n".join(c.value for c in at.caption)
