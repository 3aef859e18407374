"""Scoring job entrypoint for `ray job submit`: the same options as `care-ray score`.

ray job submit --working-dir . -- python -m jobs.score --sessions S --model M --out O
"""

from care_ray.cli import app

if __name__ == "__main__":
    app(["score", *__import__("sys").argv[1:]], prog_name="jobs.score")
