"""The factsheet's generated LaTeX: Table 1 (benchmarks), Table 2 (challenge figures), the training table, the team.

Every cell is read through factsheet/inputs.py from an input the manifest names, and every table ends with notes
saying which file and which command each figure came from. A figure the inputs lack raises `MissingFigure`,
unless the manifest declares it not measurable here; then the cell says "not measured" and a note gives the
reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from factsheet.inputs import MissingFigure, figure, load_entry, need
from factsheet.manifest import Manifest, Row
from factsheet.measure import read_provenance
from factsheet.tex import code, escape, number, path_lines, scientific
from factsheet.training_log import RunSummary, read_yaml, summarize_run
from utils.errors import UserError
from utils.files.yaml_file import read_yaml_mapping

NOT_MEASURED = r"\textit{not measured}"
DASH = "--"
CHALLENGE_COLUMNS = (  # (results.json field, header, format)
    ("valid_ave_psnr", "Val PSNR [dB]", "2f"),
    ("valid_ave_runtime", "Val time [ms]", "2f"),
    ("num_parameters", "Params [M]", "3f"),
    ("flops", "FLOPs [G]", "2f"),
    ("activations", "Acts [M]", "2f"),
    ("valid_memory", "Mem [M]", "2f"),
    ("num_conv", "Conv", "d"),
)
DEVICE_DEPENDENT = {"valid_ave_runtime", "valid_memory"}


class Notes:
    """Lettered notes under a table: `mark(text)` returns the superscript, the same one for the same text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return rf"\textsuperscript{{{chr(ord('a') + self.texts.index(text))}}}"

    def render(self) -> str:
        items = [rf"\textsuperscript{{{chr(ord('a') + i)}}}\,{text}" for i, text in enumerate(self.texts)]
        return "\\par\\smallskip\n\\begin{minipage}{\\linewidth}\\footnotesize\\raggedright\n" + (
            "\\par\\smallskip\n".join(items) + "\n\\end{minipage}\n"
        )


@dataclass
class Generated:
    """The generated .tex files by name, and the figures written into them (for checks against the PDF)."""

    files: dict[str, str] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)


def source_note(row: Row, manifest: Manifest, entry: dict) -> str:
    """Where a measured row comes from: its file, the command that made it, the checkpoint, when and where."""
    provenance = read_provenance(row) or {}
    parts = [
        f"Measured here: {code(manifest.rel(row.results_path))}, written by {code(row.refresh_command)}, "
        f"which runs {code(row.command)}"
    ]
    if row.checkpoint is not None:
        digest = provenance.get("checkpoint_sha256")
        parts.append(
            f"checkpoint {code(manifest.rel(row.checkpoint))}"
            + (f" (SHA-256 {code(digest[:16])}\\ldots)" if digest else "")
        )
    info = entry.get("benchmark_info", entry)  # benchmark mode keeps its run details apart
    where = [f"device {escape(info.get('device', '?'))}", f"backend {escape(info.get('backend', '?'))}"]
    if provenance.get("measured_at"):
        where.append(f"measured {escape(provenance['measured_at'])}")
    if provenance.get("git_commit"):
        where.append(f"commit {code(provenance['git_commit'][:10])}")
    parts.append(", ".join(where))
    return "; ".join(parts) + "."


# ------------------------------------------------------------------------------------------------- Table 1


def benchmark_columns(manifest: Manifest) -> list[str]:
    extra = [s for s in manifest.reported_benchmark if s not in manifest.sets]
    extra += [s for s in manifest.sets_not_measured if s not in manifest.sets and s not in extra]
    for name in extra:
        if name not in manifest.sets_not_measured:
            raise UserError(
                f"{manifest.path}: the authors report {name}, which no row measures; add it to benchmark.sets "
                "(and measure it) or to benchmark.not_measured with the reason"
            )
    return [*manifest.sets, *extra]


def benchmark_table(manifest: Manifest, out: Generated) -> str:
    columns = benchmark_columns(manifest)
    notes = Notes()
    body = []
    for row in manifest.rows:
        entry = load_entry(row, manifest)
        figures, counts = [], []
        for name in manifest.sets:
            psnr = number(figure(entry, ("benchmark", name, "psnr_y"), row, manifest), "2f")
            ssim = number(figure(entry, ("benchmark", name, "ssim_y"), row, manifest), "4f")
            images = number(figure(entry, ("benchmark", name, "num_images"), row, manifest), "d")
            figures.append(f"{psnr} / {ssim}")
            counts.append(f"{escape(name)} {images}")
            out.figures += [psnr, ssim]
        source = source_note(row, manifest, entry)
        cells = [escape(row.label) + notes.mark(f"{source[:-1]}; images: {', '.join(counts)}.")]
        for name in columns:
            if name in manifest.sets:
                cells.append(figures[manifest.sets.index(name)])
            else:
                reason = f"{escape(name)}: {escape(manifest.sets_not_measured[name])}."
                cells.append(NOT_MEASURED + notes.mark(reason))
        body.append(" & ".join(cells) + r" \\")
    reported_mark = notes.mark(
        f"Reported by the authors, not measured here: {escape(manifest.reported_source)}."
    )
    reported = [r"LKDN-S, reported by the authors" + reported_mark]
    for name in columns:
        if name in manifest.reported_benchmark:
            psnr, ssim = manifest.reported_benchmark[name]
            reported.append(f"{number(psnr, '2f')} / {number(ssim, '4f')}")
        else:
            reported.append(DASH)
    header = " & ".join(["Method", *map(escape, columns)]) + r" \\"
    return (
        "% generated by factsheet/build.py from factsheet/measurements/ -- do not edit\n"
        "\\begin{table}[!htb]\n\\centering\\small\n"
        "\\caption{PSNR [dB] / SSIM on the Y channel (BT.601), x4, 4-pixel border, uint8 outputs.}\n"
        "\\label{tab:benchmark}\n"
        f"\\begin{{tabular}}{{l{'c' * len(columns)}}}\n\\toprule\n{header}\n\\midrule\n"
        + "\n".join(body)
        + "\n\\midrule\n"
        + " & ".join(reported)
        + " \\\\\n\\bottomrule\n\\end{tabular}\n"
        + notes.render()
        + "\\end{table}\n"
    )


# ------------------------------------------------------------------------------------------------- Table 2


def challenge_table(manifest: Manifest, out: Generated) -> str:
    row = manifest.challenge
    entry = load_entry(row, manifest)
    notes = Notes()
    source = notes.mark(source_note(row, manifest, entry))
    lr_name = row.lr_image.name if row.lr_image else "?"
    images = number(figure(entry, ("valid_num_images",), row, manifest), "d")
    provenance = read_provenance(row) or {}
    load = provenance.get("load_average_at_start")
    cpu = f" of an {escape(provenance['cpu'])}" if provenance.get("cpu") else ""
    busy = f" (1-minute load average {load[0]:.2f} when the run started)" if load else ""
    cpu_note = (
        f"Measured on {escape(entry.get('device', '?'))}: the mean forward time over {images} DIV2K valid LR "
        f"image(s) ({code(lr_name)}), timed with \\texttt{{perf\\_counter}} after a warm-up pass, on a shared "
        f"machine with {escape(provenance.get('cpu_count', '?'))} CPU cores{cpu}{busy}; memory: "
        f"{escape(entry.get('memory_measure', '?'))}. Not comparable with the challenge's GPU figures."
    )
    cells = [r"LKDN-S, measured here" + source]
    for key, _header, spec in CHALLENGE_COLUMNS:
        if key in row.not_measured:
            cells.append(NOT_MEASURED + notes.mark(escape(row.not_measured[key]) + "."))
            continue
        text = number(figure(entry, (key,), row, manifest), spec)
        out.figures.append(text)
        cells.append(text + (notes.mark(cpu_note) if key in DEVICE_DEPENDENT else ""))
    shape = "x".join(str(int(d)) for d in entry.get("complexity_input") or []) or "?"
    extras = []
    for key, what in (
        ("fvcore_total_flops", "fvcore's total over all counted operators"),
        ("thop_flops", "thop"),
    ):
        if entry.get(key) is not None:
            text = number(figure(entry, (key,), row, manifest), "2f")
            out.figures.append(text)
            extras.append(f"{what}: {text}\\,G")
    complexity = notes.mark(
        f"Params, FLOPs, activations and convolutions are of the fused network on a {shape} input and do not "
        "depend on the device or the weights. FLOPs: multiply-accumulates of the convolution layers "
        "(fvcore's \\texttt{conv} count, the NTIRE~2023 convention)"
        + (f"; {', '.join(extras)}" if extras else "")
        + ". Acts: summed output sizes of every convolution."
    )
    reported = [
        r"LKDN-S, reported by the authors"
        + notes.mark(
            f"Reported by the authors (NTIRE~2023 kit, DIV2K valid, the organizers' GPU), not measured here: "
            f"{escape(manifest.reported_source)}."
        )
    ]
    for key, _header, spec in CHALLENGE_COLUMNS:
        value = manifest.reported_challenge.get(key)
        reported.append(DASH if value is None else number(value, spec))
    complexity_keys = {"num_parameters", "flops", "activations", "num_conv"}
    headers = [escape(h) + (complexity if k in complexity_keys else "") for k, h, _s in CHALLENGE_COLUMNS]
    header = " & ".join(["", *headers]) + r" \\"
    return (
        "% generated by factsheet/build.py from factsheet/measurements/ -- do not edit\n"
        "\\begin{table}[!htb]\n\\centering\\small\\setlength{\\tabcolsep}{4pt}\n"
        "\\caption{The challenge's figures (test\\_demo.py). Time and memory measured here are CPU figures.}\n"
        "\\label{tab:challenge}\n"
        f"\\begin{{tabular}}{{l{'r' * len(CHALLENGE_COLUMNS)}}}\n\\toprule\n{header}\n\\midrule\n"
        + " & ".join(cells)
        + " \\\\\n"
        + " & ".join(reported)
        + " \\\\\n\\bottomrule\n\\end{tabular}\n"
        + notes.render()
        + "\\end{table}\n"
    )


# ------------------------------------------------------------------------------------------------- training


def _schedule(config: dict, path: Path) -> str:
    lr = float(need(config, "lr", path))
    kind = need(config, "scheduler", path)
    if kind == "cosine":
        return f"{scientific(lr)} $\\to$ {scientific(float(need(config, 'min_lr', path)))}, cosine"
    if kind == "multistep":
        steps = ", ".join(f"{int(m):,}" for m in need(config, "milestones", path))
        return f"{scientific(lr)}, $\\times${float(need(config, 'gamma', path)):g} at {steps}"
    return f"{scientific(lr)}, constant"


def _optimizer(config: dict, path: Path) -> str:
    betas = ", ".join(f"{float(b):g}" for b in need(config, "betas", path))
    text = f"{escape(str(need(config, 'optimizer', path)).capitalize())} ($\\beta$ = {betas}"
    text += f", $\\epsilon$ = {scientific(float(need(config, 'eps', path)))}"
    decay = float(need(config, "weight_decay", path))
    return text + (f", weight decay {scientific(decay)})" if decay else ")")


def config_cells(config: dict, path: Path) -> dict[str, str]:
    """The training table's rows for one config (a recipe stage or a run)."""
    scale, patch = int(need(config, "scale", path)), int(need(config, "lr_patch", path))
    init = str(need(config, "init_from", path))
    return {
        "Training data": path_lines(need(config, "train_sources", path)),
        "HR / LR patch": f"{patch * scale} / {patch}",
        "Batch size": number(int(need(config, "batch_size", path)), ","),
        "Augmentation": "flips, 90$^\\circ$ rotations" if need(config, "augment", path) else "none",
        "Loss": escape(str(need(config, "loss", path)).upper()),
        "Optimizer": _optimizer(config, path),
        "Learning rate": _schedule(config, path),
        "Iterations": number(int(need(config, "total_iters", path)), ","),
        "EMA decay": f"{float(need(config, 'ema_decay', path)):g}",
        "Precision": escape(str(need(config, "precision", path))),
        "Online fusion": "yes" if need(config, "online_fusion", path) else "no",
        "Initialised from": path_lines([init]) if init else "scratch",
    }


def run_cells(run: RunSummary, out: Generated) -> dict[str, str]:
    """The config's rows plus what the run's log says it did."""
    config, path = run.config, run.config_path
    cells = config_cells(config, path)
    total = int(need(config, "total_iters", path))
    reached = number(run.last_iteration, ",")
    cells["Iterations"] = f"{reached} of {number(total, ',')}"
    threads = int(need(config, "threads", path))
    hours = run.wall_hours
    if run.images_used is not None:
        total_images = run.images_used + run.images_skipped
        cells["HR images used"] = (
            f"{run.images_used} of {total_images} ({run.images_skipped} smaller than the HR patch)"
        )
        out.figures.append(f"{run.images_used} of {total_images}")
    else:
        cells["HR images used"] = DASH
    # config.yml holds the flags of the run's last session only: with several, its thread count may not
    # be every session's, so the hardware cell says so and the core-hours are an upper bound
    several = len(run.sessions) > 1
    cells["Hardware"] = (
        f"{escape(run.device or '?')}, {run.processes} process(es) $\\times$ "
        + (f"{threads} thread(s)" if threads > 0 else "the default thread count")
        + (" in the last session" if several else "")
    )
    cells["Sessions"] = str(len(run.sessions))
    cells["Wall-clock hours"] = number(hours, "2f")
    out.figures += [reached, number(hours, "2f")]
    if threads > 0 and run.processes:
        core_hours = number(hours * threads * run.processes, "2f")
        cells["CPU core-hours"] = f"at most {core_hours}" if several else core_hours
        out.figures.append(core_hours)
    else:
        cells["CPU core-hours"] = DASH
    if run.last_loss is not None:
        loss = number(run.last_loss, "4f")
        cells["Last training loss"] = f"{loss} (iteration {number(run.last_loss_iteration, ',')})"
        out.figures.append(loss)
    else:
        cells["Last training loss"] = DASH
    if run.last_validation:
        cells["Last validation (PSNR\\_Y, EMA)"] = (
            f"{escape(run.last_validation)} (iteration {number(run.last_validation_iteration, ',')})"
        )
    else:
        cells["Last validation (PSNR\\_Y, EMA)"] = DASH
    return cells


def training_table(manifest: Manifest, out: Generated) -> str:
    notes = Notes()
    columns: list[tuple[str, dict[str, str]]] = []
    for path in manifest.recipe:
        config = read_yaml(path)
        stage = str(config.get("stage", path.stem))
        mark = notes.mark(
            f"The authors' recipe as this repository's config {code(manifest.rel(path))}; "
            f"run it with {code('python train/train_lkdn.py --stage ' + stage)}."
        )
        columns.append((f"Recipe: {escape(stage)}{mark}", config_cells(config, path)))
    for row in manifest.rows:
        for run_dir in row.trained_by:
            run = summarize_run(run_dir)
            mark = notes.mark(
                f"{escape(row.label)}: the run {code(manifest.rel(run_dir))}, read off its "
                f"{code('config.yml')} and {code('train.log')} (wall-clock hours: the sum over its sessions, "
                "from each session's first to last logged step; CPU core-hours: wall-clock hours $\\times$ "
                "processes $\\times$ the config's threads, an upper bound when earlier sessions ran fewer)."
            )
            stage = escape(str(run.config.get("stage", "")))
            columns.append((f"This checkpoint: {stage}{mark}", run_cells(run, out)))
    if not columns:
        return "% generated by factsheet/build.py: no recipe and no training runs in the manifest\n"
    names: list[str] = []
    for _title, cells in columns:
        names += [n for n in cells if n not in names]
    width = f"{0.72 / len(columns):.3f}"
    cell = "\\raggedright\\arraybackslash"
    spec = f">{{{cell}}}p{{0.16\\linewidth}}" + "".join(
        f">{{{cell}}}p{{{width}\\linewidth}}" for _ in columns
    )
    header = " & ".join(["", *(title for title, _cells in columns)]) + r" \\"
    lines = [
        " & ".join([name, *(cells.get(name, DASH) for _title, cells in columns)]) + r" \\" for name in names
    ]
    return (
        "% generated by factsheet/build.py from the recipe configs and the training runs -- do not edit\n"
        "\\begin{table}[!htb]\n\\centering\\footnotesize\n"
        "\\caption{Training: the authors' two-stage recipe, and what was run for this repository's checkpoint.}\n"
        "\\label{tab:training}\n"
        f"\\begin{{tabular}}{{{spec}}}\n\\toprule\n{header}\n\\midrule\n"
        + "\n".join(lines)
        + "\n\\bottomrule\n\\end{tabular}\n"
        + notes.render()
        + "\\end{table}\n"
    )


# ------------------------------------------------------------------------------------------------- all


TEAM_FIELDS = ("team_name", "leader", "members", "affiliations", "codalab_users", "code", "results")


def team_tex(team_number: int, model_name: str, team: dict, source: Path) -> str:
    """The team section (the template's "Team details") and the \\teamnumber / \\modelname macros."""
    missing = [name for name in TEAM_FIELDS if not team.get(name)]
    if missing:
        raise MissingFigure(f"{source}: no {', '.join(missing)}; the team section needs every field")
    affiliations = team["affiliations"]
    unknown = sorted({a for a in team["members"].values() if a not in affiliations})
    if unknown:
        raise MissingFigure(
            f"{source}: members name affiliations {', '.join(unknown)} that `affiliations` lacks"
        )
    if team["leader"] not in team["members"]:
        raise MissingFigure(f"{source}: the leader {team['leader']} is not among the members")
    marks = {key: i + 1 for i, key in enumerate(affiliations)}
    members = ", ".join(
        escape(name) + (" (leader)" if name == team["leader"] else "") + f"\\textsuperscript{{{marks[key]}}}"
        for name, key in team["members"].items()
    )
    places = "; ".join(
        f"\\textsuperscript{{{marks[key]}}}{escape(name)}" for key, name in affiliations.items()
    )
    items = [
        f"Team name: {escape(team['team_name'])}; team number {team_number:02d}, model \\texttt{{{escape(model_name)}}}",
        f"Team leader: {escape(team['leader'])}",
        f"Members: {members}",
        f"Affiliations: {places}",
        f"CodaLab user names: {', '.join(code(u) for u in team['codalab_users'])}",
        f"Code: \\url{{{team['code']}}}",
        f"Results: {escape(team['results'])}",
    ]
    return (
        f"% generated by factsheet/build.py from {source.name} and models/__init__.py -- do not edit\n"
        f"\\newcommand{{\\teamnumber}}{{{team_number:02d}}}\n"
        f"\\newcommand{{\\modelname}}{{{escape(model_name)}}}\n"
        f"\\newcommand{{\\teamname}}{{{escape(team['team_name'])}}}\n"
        "\\newcommand{\\teamdetails}{\\begin{itemize}\n"
        + "".join(f"  \\item {item}\n" for item in items)
        + "\\end{itemize}}\n"
    )


TEAM_FILE = Path(__file__).with_name("team.yml")


def generate(manifest: Manifest, team_number: int, model_name: str, team_file: Path = TEAM_FILE) -> Generated:
    """Every generated .tex file, or MissingFigure / UserError on the first input that is missing or wrong."""
    out = Generated()
    team = read_yaml_mapping(team_file, "it holds the team section of the factsheet")
    out.files["team.tex"] = team_tex(team_number, model_name, team, team_file)
    out.files["table_benchmark.tex"] = benchmark_table(manifest, out)
    out.files["table_challenge.tex"] = challenge_table(manifest, out)
    out.files["table_training.tex"] = training_table(manifest, out)
    return out
