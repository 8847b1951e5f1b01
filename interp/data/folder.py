"""A built data folder (`interp data build`, or an audit's questions laid out the same way).

The layout every attack and protection reads:
    forget_train.jsonl, forget_val.jsonl, forget_test.jsonl (test), and the same for retain
        (questions, split by entity: `interp.data.splits`)
    forget_corpus.jsonl, retain_corpus.jsonl, unrelated.jsonl  (texts: {"text": ...})
    preference.jsonl  (DPO/NPO pairs: prompt, chosen, rejected, split)
    manifest.json  (what built it)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from interp.data.questions import Question, load_questions
from interp.errors import InterpError

# Split files as folders written before the test split was named so (`*_eval`, until 0.1.0 of
# this layout): read under the new names, so old run folders keep working.
OLD_NAMES = {"forget_test": "forget_eval", "retain_test": "retain_eval",
             "forget_test_letter": "forget_eval_letter", "retain_test_letter": "retain_eval_letter",
             "forget_test_unfiltered": "forget_eval_unfiltered",
             "retain_test_unfiltered": "retain_eval_unfiltered"}
NEW_NAMES = {old: new for new, old in OLD_NAMES.items()}


def split_file(folder: Path, name: str) -> Path:
    """The file of split `name` in `folder`: `NAME.jsonl`, or the file an older layout wrote it
    to (`forget_eval.jsonl` for `forget_test`); an old name asked for reads the new file too."""
    name = NEW_NAMES.get(name, name)
    path = folder / f"{name}.jsonl"
    old = folder / f"{OLD_NAMES.get(name, name)}.jsonl"
    return old if not path.is_file() and old.is_file() else path


@dataclass(frozen=True)
class DataFolder:
    """A built benchmark folder, read for training and attacks."""

    folder: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    def _path(self, name: str) -> Path:
        path = split_file(self.folder, name)
        if not path.is_file():
            why = (" (built before validation splits existed: build the folder again)"
                   if name.endswith("_val") else "")
            raise InterpError(f"{path} is missing{why}; run `interp data build --out "
                              f"{self.folder}`")
        return path

    def has(self, name: str) -> bool:
        """Whether split file `name` exists and is not empty."""
        path = split_file(self.folder, name)
        return path.is_file() and bool(path.read_text().strip())

    def questions(self, name: str, limit: int | None = None) -> list[Question]:
        """A question file by name, e.g. "forget_test" (the first `limit` of them)."""
        return load_questions(self._path(name), limit=limit)

    def corpus(self, name: str) -> list[str]:
        """The texts of a corpus file by name, e.g. "forget_corpus"."""
        return [r["text"] for r in self.rows(name)]

    def rows(self, name: str) -> list[dict]:
        """The JSON rows of a file by name."""
        return [json.loads(line) for line in self._path(name).read_text().splitlines() if line]

    def train_entities(self, domain: str = "forget") -> set[str]:
        """The entities of the attacks' training split (`{domain}_train`)."""
        return {q.meta.get("entity", "") for q in self.questions(f"{domain}_train")}

    def preference(self) -> list[dict]:
        """The DPO/NPO preference rows (prompt, chosen, rejected, split)."""
        return self.rows("preference")

    @property
    def model_spec(self) -> str:
        """The model the data was built for (a folder inside this one resolves from here)."""
        spec = self.manifest["model"]
        return str(self.folder / spec) if (self.folder / spec).exists() else spec

    @property
    def manifest(self) -> dict:
        """The folder's `manifest.json`: what built it."""
        from interp.store import read_json

        return read_json(self.folder / "manifest.json")


def as_data(data: DataFolder | str | Path) -> DataFolder:
    """`data` as a `DataFolder` (a path is wrapped, a folder kept)."""
    return data if isinstance(data, DataFolder) else DataFolder(Path(data))
