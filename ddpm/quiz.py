"""The "Real or generated?" quiz's answers: a SQLite database, the score people get, and its copy on the Hub.

One row per answer (``Answer``): an anonymous round id, the tissue, the sha256 of the model.safetensors that made
the generated patch and the sampling settings, where the real patch came from, the side the generated patch was
on, the side the visitor named, whether that was right, the seconds they took and when. No visitor id, name or
address is stored.

The database is safe with many visitors at once: WAL journal (readers never wait for the writer), one short
transaction per answer on a connection of its own, and a busy timeout instead of an error while another writer
holds the lock. Its layout has a version (``PRAGMA user_version``); ``MIGRATIONS[v]`` turns version v into v + 1
inside one transaction, so a later change appends a function there and old files are brought up to date when
the app opens them.

Scores are shares of right answers with a 95% Wilson interval (``wilson_interval``): 50% is chance, what a
visitor who cannot tell the two apart gets on average.

On a Hugging Face Space, whose disk is lost at a restart, ``start_hub_sync`` also appends each new answer to a
JSON-lines file that ``huggingface_hub.CommitScheduler`` uploads to a dataset repo every few minutes (off unless
``DDPM_QUIZ_HUB_REPO`` is set).

    python -m ddpm quiz-report [--db PATH]     # the score, overall and by tissue
"""
from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

DB_ENV = "DDPM_QUIZ_DB"  # where the answers are kept (a file path)
HUB_REPO_ENV = "DDPM_QUIZ_HUB_REPO"  # a Hub dataset repo (owner/name) to copy the answers to; unset: no copy
HUB_EVERY_ENV = "DDPM_QUIZ_HUB_EVERY_MIN"  # minutes between two uploads (default HUB_EVERY_MIN)
HUB_EVERY_MIN = 10.0
DB_NAME = "quiz.sqlite3"
SIDES = ("left", "right")
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval
BUSY_TIMEOUT_S = 10.0  # a writer waits this long for another one's lock before giving up
HUB_EXPORTED_KEY = "hub_exported_id"  # meta key: the last answer id appended to the Hub export


class QuizDBError(RuntimeError):
    """The quiz database cannot be opened or used; the message says which file and what to do."""


class AlreadyAnswered(ValueError):
    """A round's answer is already in the database: each round is answered once."""


def default_db_path(env: Mapping[str, str] | None = None) -> Path:
    """``$DDPM_QUIZ_DB`` if set; else on a Space with persistent storage (``/data``) ``/data/ddpm/quiz.sqlite3``;
    else ``$XDG_DATA_HOME/ddpm/quiz.sqlite3`` (``~/.local/share/ddpm``): outside the app's folder, so a new
    deployment of the code keeps the answers."""
    env = os.environ if env is None else env
    if env.get(DB_ENV):
        return Path(env[DB_ENV]).expanduser()
    if env.get("SPACE_ID") and Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/ddpm") / DB_NAME
    data_home = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "ddpm" / DB_NAME


# ---- the score ----------------------------------------------------------------------------------------------------
def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion, ``correct`` successes out of ``n`` (Wilson 1927; Newcombe 1998's
    method 3): (p̂ + z²/2n ± z·√(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n). Unlike p̂ ± z·√(p̂(1-p̂)/n) it stays inside
    [0, 1] and is not empty at 0 or n successes. With n = 0 nothing is known: (0, 1)."""
    if not (isinstance(n, int) and isinstance(correct, int) and 0 <= correct <= n):
        raise ValueError(f"need whole numbers 0 ≤ correct ≤ n, got correct = {correct!r}, n = {n!r}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Score:
    """``correct`` right answers out of ``answers``."""

    correct: int = 0
    answers: int = 0

    @property
    def share(self) -> float:
        """The share of right answers (NaN before any answer)."""
        return self.correct / self.answers if self.answers else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.answers)

    def __add__(self, other: "Score") -> "Score":
        return Score(self.correct + other.correct, self.answers + other.answers)

    def describe(self) -> str:
        """E.g. "12 of 20 right (60%, 95% interval 39–78%)"."""
        if not self.answers:
            return "no answers yet"
        low, high = self.interval
        return (f"{self.correct} of {self.answers} right ({self.share:.0%}, 95% interval "
                f"{100 * low:.0f}–{100 * high:.0f}%)")


@dataclass(frozen=True)
class ScoreTable:
    """Scores by tissue (class index -> Score; tissues without answers may be absent)."""

    by_tissue: Mapping[int, Score]

    @property
    def overall(self) -> Score:
        return sum(self.by_tissue.values(), Score())

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[tuple[int, bool]]) -> "ScoreTable":
        """From (tissue, right?) pairs, e.g. one visitor's answers in this session."""
        counts: dict[int, Score] = {}
        for tissue, correct in outcomes:
            counts[tissue] = counts.get(tissue, Score()) + Score(int(bool(correct)), 1)
        return cls(counts)


def report_markdown(table: ScoreTable, class_names: tuple[str, ...], heading: str) -> str:
    """The score as a Markdown table, overall and by tissue, each with its 95% Wilson interval."""
    lines = [heading, "", "| tissue | answers | right | share right | 95% interval (Wilson) |", "|---|---:|---:|---:|---|"]
    for name, score in [("**all tissues**", table.overall),
                        *((class_names[c], table.by_tissue.get(c, Score())) for c in range(len(class_names)))]:
        if score.answers:
            low, high = score.interval
            lines.append(f"| {name} | {score.answers:,} | {score.correct:,} | {score.share:.1%} | "
                         f"{low:.1%} – {high:.1%} |")
        else:
            lines.append(f"| {name} | 0 | 0 | – | – |")
    lines += ["", "50% is chance: someone who cannot tell a generated patch from a real one names the right side half "
                  "the time. An interval that holds 50% is no evidence that people can tell them apart."]
    return "\n".join(lines)


# ---- the database ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """One answered round, as stored."""

    round_id: str  # random, names no one
    tissue: int  # class index of both patches
    weights_sha256: str  # of the model.safetensors that made the generated patch
    sampling: str  # how it was sampled, e.g. "dpmpp, 20 steps, guidance 1.5"
    real_source: str  # where the real patch came from, e.g. "val" or "subset"
    generated_side: str  # "left" or "right"
    answer: str  # the side the visitor said was generated
    seconds: float  # from showing the round to the answer
    answered_at: float  # unix time

    def __post_init__(self) -> None:
        for name in ("generated_side", "answer"):
            if getattr(self, name) not in SIDES:
                raise ValueError(f"{name} must be one of {SIDES}, got {getattr(self, name)!r}")

    @property
    def correct(self) -> bool:
        return self.answer == self.generated_side


def _create_v1(con: sqlite3.Connection) -> None:
    con.execute("""CREATE TABLE answers (
        id INTEGER PRIMARY KEY,
        round_id TEXT NOT NULL UNIQUE,
        tissue INTEGER NOT NULL,
        weights_sha256 TEXT NOT NULL,
        sampling TEXT NOT NULL,
        real_source TEXT NOT NULL,
        generated_side TEXT NOT NULL CHECK (generated_side IN ('left', 'right')),
        answer TEXT NOT NULL CHECK (answer IN ('left', 'right')),
        correct INTEGER NOT NULL CHECK (correct = (answer = generated_side)),
        seconds REAL NOT NULL,
        answered_at REAL NOT NULL)""")
    con.execute("CREATE INDEX answers_by_weights ON answers (weights_sha256, tissue)")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


#: ``MIGRATIONS[v]`` brings a database at version v to v + 1 (run in one transaction: no executescript, which
#: commits); the current version is ``len(MIGRATIONS)``. A new layout appends a function, never edits an old one.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_create_v1]
COLUMNS = ("round_id", "tissue", "weights_sha256", "sampling", "real_source", "generated_side", "answer", "seconds",
           "answered_at")


class QuizDB:
    """The answers database at ``path`` (created, or migrated to the current layout, when opened). Each call opens
    its own short-lived connection, so one object serves every thread of the server."""

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path = Path(path).expanduser()
        self.busy_timeout_s = busy_timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connection() as con:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise QuizDBError(f"the quiz database {self.path} cannot use a write-ahead log (journal mode "
                                      f"{mode!r}); put it on a local disk with ${DB_ENV}")
                self._migrate(con)
        except (OSError, sqlite3.Error) as err:
            raise QuizDBError(f"the quiz database {self.path} cannot be opened ({err}); set ${DB_ENV} to a file in "
                              "a folder the server can write, or move a damaged file aside") from err

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (each statement its own transaction unless BEGIN is issued)."""
        with closing(sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)) as con:
            con.execute("PRAGMA synchronous = NORMAL")  # with WAL: a process crash loses nothing committed
            yield con

    @staticmethod
    def _migrate(con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")  # one migrator at a time; others wait, then find the work done
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise QuizDBError(f"this quiz database has layout version {version}, newer than this app knows "
                                  f"({len(MIGRATIONS)}); run the newer app, or point ${DB_ENV} at another file")
            for step in MIGRATIONS[version:]:
                step(con)
            con.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @property
    def version(self) -> int:
        with self._connection() as con:
            return con.execute("PRAGMA user_version").fetchone()[0]

    def record(self, answer: Answer) -> int:
        """Store one answer; returns its row id. AlreadyAnswered if its round is in the database."""
        values = asdict(answer)
        try:
            with self._connection() as con:
                cur = con.execute(f"INSERT INTO answers ({', '.join(COLUMNS)}, correct) "
                                  f"VALUES ({', '.join('?' * len(COLUMNS))}, ?)",
                                  [values[c] for c in COLUMNS] + [int(answer.correct)])
                return cur.lastrowid
        except sqlite3.IntegrityError as err:
            if "UNIQUE" in str(err):
                raise AlreadyAnswered(f"round {answer.round_id[:8]}… was already answered") from None
            raise

    def count(self, weights_sha256: str | None = None) -> int:
        where, args = self._where(weights_sha256)
        with self._connection() as con:
            return con.execute(f"SELECT COUNT(*) FROM answers {where}", args).fetchone()[0]

    def scores(self, weights_sha256: str | None = None) -> ScoreTable:
        """Everyone's score by tissue, for the weights with this sha256 (or a prefix of it; None: all weights)."""
        where, args = self._where(weights_sha256)
        with self._connection() as con:
            rows = con.execute(f"SELECT tissue, SUM(correct), COUNT(*) FROM answers {where} GROUP BY tissue", args)
            return ScoreTable({int(t): Score(int(k), int(n)) for t, k, n in rows})

    def weights(self) -> list[tuple[str, int]]:
        """(weights sha256, answers) for every model answered about, most answers first."""
        with self._connection() as con:
            return [(w, n) for w, n in con.execute(
                "SELECT weights_sha256, COUNT(*) AS n FROM answers GROUP BY weights_sha256 ORDER BY n DESC, weights_sha256")]

    def rows_after(self, row_id: int, limit: int = 10_000) -> list[dict]:
        """Up to ``limit`` stored answers with an id above ``row_id``, oldest first, as dicts (``id`` and ``correct``
        included)."""
        with self._connection() as con:
            con.row_factory = sqlite3.Row
            rows = con.execute("SELECT * FROM answers WHERE id > ? ORDER BY id LIMIT ?", (row_id, limit))
            return [dict(r) for r in rows]

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._connection() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return default if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self._connection() as con:
            con.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, value))

    @staticmethod
    def _where(weights_sha256: str | None) -> tuple[str, tuple]:
        if not weights_sha256:
            return "", ()
        return "WHERE weights_sha256 LIKE ?", (weights_sha256.lower().replace("%", "").replace("_", "") + "%",)


def open_report_db(path: str | os.PathLike) -> QuizDB:
    """The database at ``path`` for reading: a missing file is a QuizDBError saying how one comes to exist, not a
    new empty database."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise QuizDBError(f"no quiz database at {path}: the app writes one when visitors play \"Real or generated?\" "
                          f"(${DB_ENV} sets where); pass --db with its path")
    return QuizDB(path)


# ---- the copy on the Hub --------------------------------------------------------------------------------------------
class AnswerExport:
    """Appends the answers not yet exported to one JSON-lines file in ``folder`` (one file per server process, named
    by its start time, so a restarted Space never overwrites an earlier file), and remembers in the database the
    last answer it wrote. The file only grows, as ``CommitScheduler`` expects of what it uploads."""

    def __init__(self, db: QuizDB, folder: str | os.PathLike):
        self.db = db
        self.folder = Path(folder)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.path = self.folder / f"answers-{stamp}-{secrets.token_hex(3)}.jsonl"

    def __call__(self) -> int:
        """Append what is new; returns how many answers were written."""
        last = int(self.db.get_meta(HUB_EXPORTED_KEY, "0"))
        written = 0
        while rows := self.db.rows_after(last):
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
                f.flush()
                os.fsync(f.fileno())
            last, written = rows[-1]["id"], written + len(rows)
            self.db.set_meta(HUB_EXPORTED_KEY, str(last))
        return written


def start_hub_sync(db: QuizDB, repo_id: str, folder: str | os.PathLike, every_min: float = HUB_EVERY_MIN,
                   token: str | None = None, hf_api=None):
    """A ``huggingface_hub.CommitScheduler`` that, every ``every_min`` minutes, appends the new answers to a file in
    ``folder`` (under the scheduler's lock) and uploads what changed to the dataset repo ``repo_id`` (created
    private if missing). ``hf_api`` replaces the HfApi client (tests)."""
    from huggingface_hub import CommitScheduler

    class AnswersScheduler(CommitScheduler):
        def push_to_hub(self):
            with self.lock:
                self.export()
            return super().push_to_hub()

    AnswersScheduler.export = AnswerExport(db, folder)
    return AnswersScheduler(repo_id=repo_id, repo_type="dataset", folder_path=folder, every=every_min, token=token,
                            private=True, allow_patterns=["answers-*.jsonl"], hf_api=hf_api)


def hub_sync_from_env(db: QuizDB, env: Mapping[str, str] | None = None, hf_api=None):
    """(scheduler or None, a sentence for the operator): the Hub copy ``DDPM_QUIZ_HUB_REPO`` asks for, with the token
    in ``HF_TOKEN`` (else the one ``huggingface-cli login`` stored), every ``DDPM_QUIZ_HUB_EVERY_MIN`` minutes.
    Off (None) when the repo is not set; a failure to start is said, not raised: the answers stay in the database."""
    env = os.environ if env is None else env
    repo_id = (env.get(HUB_REPO_ENV) or "").strip()
    if not repo_id:
        return None, None
    try:
        every = float(env.get(HUB_EVERY_ENV) or HUB_EVERY_MIN)
        if not (math.isfinite(every) and every > 0):
            raise ValueError
    except ValueError:
        return None, f"${HUB_EVERY_ENV}={env.get(HUB_EVERY_ENV)!r} must be a number of minutes > 0; answers are not copied to the Hub"
    folder = db.path.parent / f"{db.path.stem}-hub"
    try:
        scheduler = start_hub_sync(db, repo_id, folder, every, env.get("HF_TOKEN") or None, hf_api)
    except Exception as err:  # noqa: BLE001 - any failure of the Hub leaves the quiz working on its database
        return None, (f"answers are not copied to the Hub dataset {repo_id} ({type(err).__name__}: {err}); check "
                      f"${HUB_REPO_ENV} and HF_TOKEN (a token that may write to that repo)")
    return scheduler, f"answers are copied to the Hub dataset {repo_id} every {every:g} min"

