"""One Oxen step, run with the Python of bench/.peers/oxen (where ``oxenai`` is installed).

oxen_step.py init PROJECT NAME EMAIL   configure the user (under $HOME) and init a repo
oxen_step.py commit PROJECT MESSAGE    add PROJECT/data and commit it
oxen_step.py restore PROJECT           write the committed PROJECT/data back from .oxen
"""

from __future__ import annotations

import os
import sys

import oxen  # type: ignore[import-not-found,unused-ignore]
import oxen.user  # type: ignore[import-not-found,unused-ignore]


def main(argv: list[str]) -> int:
    action, project = argv[0], argv[1]
    if action == "init":
        oxen.user.config_user(argv[2], argv[3])  # under $HOME/.config/oxen
        oxen.Repo(project).init()
    elif action == "commit":
        repo = oxen.Repo(project)
        repo.add(os.path.join(project, "data"))
        try:
            repo.commit(argv[2])
        except ValueError as exc:
            # Oxen refuses an empty commit: re-adding an unchanged tree ends here.
            if "No changes" not in str(exc):
                raise
            print("nothing to commit")
    elif action == "restore":
        repo = oxen.Repo(project)
        repo.restore("data", source="main")
    else:
        raise SystemExit(f"unknown action {action}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
