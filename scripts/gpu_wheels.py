"""The wheels the lent GPU machine lacks, in one folder that travels with the working tree (`make gpu-wheels`).

That machine has no network and its own python3 3.12 (torch 2.11, lightning, transformers; the whole list is
scripts/gpu_machine_packages.txt). Rather than a hand-kept list, this walks the requirements of ROOTS as this
venv has them installed, keeps every distribution the machine does not have, and fetches each at the version
tested here: a py3 / cp312 manylinux wheel from PyPI, or a wheel built here (`pip wheel --no-deps`) for projects
that publish only an sdist (deepspeed, antlr4-python3-runtime). `check` proves a folder installs there: one
version per project, cp312-compatible tags, every requirement met by the folder or the machine, under the size
limit. `missing` lists the folder's wheels this interpreter lacks (what scripts/gpu_check.sh installs).

  python scripts/gpu_wheels.py download .gpu_wheels | check .gpu_wheels | missing .gpu_wheels
"""

from __future__ import annotations

import email.parser
import importlib.metadata as md
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename

HERE = Path(__file__).resolve().parent
MACHINE_LIST = HERE / "gpu_machine_packages.txt"
# What the GPU check imports that the machine lacks: hydra (+ the submitit launcher pantheon's launcher plugin
# extends), diffusers, deepspeed, open_clip (the tiny pipeline's CLIP vocabulary). Not wandb or mlxtend: the
# check logs to csv and trains on synthetic batches.
ROOTS = ("hydra-core", "hydra-submitit-launcher", "submitit", "diffusers", "deepspeed", "open-clip-torch")
# The machine has these, at versions nobody read; the wheels want recent ones (pydantic: typing-extensions>=4.16,
# importlib-metadata: zipp>=3.20). Carried too, and installed there only when the machine's copy is too old.
FALLBACKS = ("typing-extensions", "zipp")
# The machine's interpreter, for environment markers and wheel tags.
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "linux_x86_64")  # fmt: skip
LIMIT_MIB = 48  # the working tree that travels is 64 MiB in all; leave room for the repository itself


def machine_packages(path: Path = MACHINE_LIST) -> dict[str, str | None]:
    """{canonical name: version or None} of the GPU machine."""
    found: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = version or None
    return found


def applies(req: Requirement) -> bool:
    """The requirement holds on the target interpreter without extras."""
    return req.marker is None or req.marker.evaluate(TARGET)


def met_by_machine(req: Requirement, machine: dict[str, str | None]) -> bool | None:
    """True/False when the machine has the project (version checked when known); None when it lacks it."""
    name = canonicalize_name(req.name)
    if name not in machine:
        return None
    version = machine[name]
    return version is None or req.specifier.contains(version, prereleases=True)


def closure(machine: dict[str, str | None]) -> dict[str, str]:
    """{name: version installed here} of ROOTS and their requirements, less what the machine has."""
    todo, needed = list(ROOTS), {canonicalize_name(n): md.version(n) for n in FALLBACKS}
    while todo:
        name = canonicalize_name(todo.pop())
        if name in needed or name in machine:
            continue
        needed[name] = md.version(name)
        for text in md.requires(name) or []:
            req = Requirement(text)
            if applies(req):
                if met_by_machine(req, machine) is False:
                    print(
                        f"warning: {name} wants {req}, the machine has {machine[canonicalize_name(req.name)]}"
                    )
                todo.append(req.name)
    return needed


def wheel_of(folder: Path, name: str) -> Path | None:
    return next((w for w in folder.glob("*.whl") if canonicalize_name(parse_wheel_filename(w.name)[0]) == name), None)  # fmt: skip


def download(folder: Path) -> None:
    """Fetch the closure into `folder` (wheels already there at the right version are kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    for name, version in sorted(closure(machine_packages()).items()):
        have = wheel_of(folder, name)
        if have and str(parse_wheel_filename(have.name)[1]) == version:
            continue
        if have:
            have.unlink()  # one version per project, or the install there stops
        spec = f"{name}=={version}"
        binary = [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                  "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(folder), spec]  # fmt: skip
        if subprocess.run(binary, capture_output=True, text=True).returncode != 0:
            print(f"{spec}: no cp312 wheel on PyPI, building one here (pip wheel --no-deps)")
            subprocess.run([*pip, "wheel", "--no-deps", "-w", str(folder), spec], check=True)
    check(folder)


def target_tags() -> set[Tag]:
    tags = {Tag(i, "none", "any") for i in ("py3", "py312", "cp312")}
    for platform in (*PLATFORMS, "manylinux_2_34_x86_64", "manylinux_2_31_x86_64"):
        tags |= {
            Tag("cp312", "cp312", platform),
            Tag("cp312", "abi3", platform),
            Tag("py3", "none", platform),
        }
        tags |= {Tag(f"cp3{m}", "abi3", platform) for m in range(2, 12)}
    return tags


def requires_of(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        message = email.parser.Parser().parsestr(z.read(meta).decode())
    return [Requirement(r) for r in message.get_all("Requires-Dist") or []]


def check(folder: Path) -> list[str]:
    """Problems that would stop the install or the imports on the GPU machine; exits 1 when there are any."""
    machine, wheels = machine_packages(), sorted(folder.glob("*.whl"))
    have = {canonicalize_name(parse_wheel_filename(w.name)[0]): parse_wheel_filename(w.name) for w in wheels}
    problems = [f"{folder}: no wheels (make gpu-wheels)"] if not wheels else []
    if len(have) != len(wheels):
        problems.append("two versions of one project: the install there would stop")
    tags = target_tags()
    for wheel in wheels:
        if not parse_wheel_filename(wheel.name)[3] & tags:
            problems.append(f"{wheel.name}: not installable on cp312 manylinux x86_64")
        for req in filter(applies, requires_of(wheel)):
            name = canonicalize_name(req.name)
            ok = met_by_machine(req, machine)
            if ok is None and name in have:
                ok = req.specifier.contains(have[name][1], prereleases=True)
            if not ok:
                problems.append(f"{wheel.name} needs {req}: neither the folder nor the machine has it")
    size = sum(w.stat().st_size for w in wheels) / 2**20
    if size > LIMIT_MIB:
        problems.append(f"{size:.1f} MiB of wheels: over {LIMIT_MIB} MiB")
    for p in problems:
        print(f"problem: {p}")
    print(
        f"{folder}: {len(wheels)} wheels, {size:.1f} MiB, {'OK' if not problems else 'NOT OK'} for the GPU machine"
    )
    if problems:
        sys.exit(1)
    return problems


def missing(folder: Path) -> list[Path]:
    """The folder's wheels whose project this interpreter lacks, or has at a version another wheel of the
    folder does not accept: installing only these leaves the machine's own copies (its torch above all) alone."""
    wheels = sorted(folder.glob("*.whl"))
    wants = [r for w in wheels for r in requires_of(w) if applies(r)]
    out = []
    for wheel in wheels:
        name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            out.append(wheel)
            continue
        refused = [str(r) for r in wants if canonicalize_name(r.name) == name and not r.specifier.contains(have, prereleases=True)]  # fmt: skip
        if refused:
            print(
                f"{name} {have} is too old for {', '.join(refused)}: installing {wheel.name}", file=sys.stderr
            )
            out.append(wheel)
    return out


def installed_here() -> dict[str, md.Distribution]:
    return {canonicalize_name(d.metadata["Name"]): d for d in md.distributions()}


def needed_by(names: set[str], dists: dict[str, md.Distribution]) -> set[str]:
    """`names` and everything they require as installed here (markers of this interpreter, no extras)."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in dists:
            continue
        seen.add(name)
        todo += [canonicalize_name(r.name) for r in map(Requirement, dists[name].requires or []) if r.marker is None or r.marker.evaluate({"extra": ""})]  # fmt: skip
    return seen


def rehearsal_site(out: Path, wheels: Path) -> tuple[Path, list[str]]:
    """A view of this interpreter's site-packages as the GPU machine will look after the install: symlinks to
    every top-level entry except those of distributions that neither the machine, the wheels nor the machine's
    own packages (as installed here: their versions differ) bring. Run `python -S` with it on PYTHONPATH and an
    import the machine could not satisfy fails here, while optional imports take their fallbacks, as there."""
    import os
    import shutil
    import site

    dists = installed_here()
    carried = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels.glob("*.whl")}
    allowed = needed_by(set(machine_packages()) | carried, dists) | {"pantheon"}  # not its declared needs
    owners: dict[str, set[str]] = {}
    for name, dist in dists.items():
        for top in {Path(str(f)).parts[0] for f in dist.files or []} | {Path(str(dist._path)).name}:
            owners.setdefault(top, set()).add(name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    blocked: set[str] = set()
    for packages in site.getsitepackages():
        for entry in sorted(os.listdir(packages)):
            owned = owners.get(entry, set())
            if owned and not owned & allowed:
                blocked |= owned
            elif not (out / entry).exists():
                (out / entry).symlink_to(Path(packages) / entry)
    return out, sorted(blocked)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("download", "check", "missing"):
        sys.exit(__doc__)
    command, folder = argv[0], Path(argv[1])
    if command == "download":
        download(folder)
    elif command == "check":
        check(folder)
    else:
        print("\n".join(str(w) for w in missing(folder)))


if __name__ == "__main__":
    main(sys.argv[1:])
