from care_ray.cli import run

run()
