"""One GSM8K token-savings run: methods × ratios × budgets, resumable, data first.

Methods (rows of the report):
- ``original``: the base model, zero-shot (or k-shot) CoT; the reference every saving is
  measured against.
- ``tokenskip``: the evaluated adapter with the ratio in the TokenSkip prompt format (or,
  through ``--base-url``, the proxy's ``cot_ratio`` knob).
- ``instruction``: the base model told to be concise within γ × its mean CoT length.
- ``truncation``: the original output cut at γ of its tokens (no new generation).
- ``prompt-compression``: k-shot exemplars compressed with the core at γ (needs shots).
- ``exemplar-selection``: for each question, whole k-shot exemplars chosen by relevance to
  it (BM25) until γ of the exemplars' tokens (:func:`tokenskip.relevance.select_exemplars`):
  no word of a kept exemplar is dropped, its ``####`` line verbatim (needs shots).
- ``instruction-budget``: at each cap B, the concise-reasoning instruction asks for at most
  B tokens of reasoning (one generation per cap): the prompting baseline beside budget
  forcing at the same budgets.
- ``budget-forcing``: s1's budget forcing at each budget: the reasoning stops there, the
  answer cue (``--force-cue``) is appended and the model writes at most
  ``--force-answer-tokens`` more; an answer written under the budget is left as it is. With
  a local model the first ``budget`` tokens are the original greedy generation's (the same
  tokens the engine's own forcing would produce) and only the answer is generated, from
  the prompt, those tokens and the cue; through ``--base-url`` the server does the forcing
  (the proxy's ``cot_method: budget-forcing`` with ``cot_budget``).
- ``tokenskip-forcing``: budget forcing on the TokenSkip adapter's own reasoning (its
  γ = 1.0 greedy generation, stopped at each budget, the cue, the answer): the budget knob
  beside the adapter's ratio knob, on the same model (local ``--adapter`` only).

Budgets: generation is capped at the largest budget; with a local model the smaller budgets
are the same greedy generation cut at that many tokens (identical to a run capped there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenskip.compress import check_ratio
from tokenskip.errors import InvalidInputError
from tokenskip.evaluation.cache import GenerationCache, ThroughputLog, sample_key
from tokenskip.evaluation.metrics import achieved_ratio, mean, median, wilson_interval
from tokenskip.progress import progress_bar
from tokenskip.provenance import portable_path, portable_paths
from tokenskip.ratio_prompt import ADAPTER_META, delimiter_in
from tokenskip.reasoning import DEFAULT_ANSWER_TOKENS, DEFAULT_CUE, BudgetForcing
from tokenskip.runtime.generate import Generation, Generator, Prompt
from tokenskip.scorers import SCORER_NAMES
from tokenskip.tasks import gsm8k
from tokenskip.tokens import TextTokenizer, chat_prompt_tokens

METHODS = (
    "original",
    "tokenskip",
    "instruction",
    "truncation",
    "prompt-compression",
    "exemplar-selection",
    "budget-forcing",
    "instruction-budget",
    "tokenskip-forcing",
)
FORCING = ("budget-forcing", "tokenskip-forcing")
"""Methods whose generation at each budget is forced (stored per budget, not cut)."""
DEFAULT_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines a run; validated before any model loads."""

    model: str = "smollm2"
    """Local model (embedded name, directory, GGUF), or the served name with ``base_url``."""
    adapter: str | None = None
    """TokenSkip LoRA adapter directory (its ``tokenskip.json`` gives the delimiter)."""
    base_url: str | None = None
    """An OpenAI-compatible server to evaluate instead of a local model."""
    api_key: str = "unused"
    """Key for ``base_url``."""
    tokenizer: str | None = None
    """Model whose tokenizer counts CoT tokens (default: ``model`` locally, smollm2 remotely)."""
    data: str | None = None
    """GSM8K JSONL file or directory, or ``openai/gsm8k`` (default: ../shared/data/gsm8k)."""
    split: str = "test"
    """Data split to evaluate."""
    limit: int | None = None
    """Evaluate the first N problems only."""
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    """Keep ratios γ; 1.0 is always included."""
    methods: tuple[str, ...] = (
        "original",
        "tokenskip",
        "instruction",
        "truncation",
        "prompt-compression",
    )
    """Methods to run; ones that do not apply (no adapter, no shots) are skipped and said so."""
    budgets: tuple[int, ...] = (256, 512)
    """Generation caps (max_new_tokens) to report accuracy at."""
    batch_size: int = 8
    """Concurrent samples (local batch size or concurrent HTTP requests)."""
    shots: int = 0
    """k-shot exemplars from the train split (0 = zero-shot)."""
    scorer: str = "heuristic"
    """Scorer for the prompt-compression baseline: ``heuristic``, ``self-info`` (the embedded
    model), ``self-info:MODEL`` or ``classifier:DIR``."""
    dtype: str = "float32"
    """Weights of a local model: ``float32`` or ``bfloat16`` (~2-3x faster on CPUs with
    AVX-512 BF16; greedy output can differ in rare near-ties)."""
    latency_samples: int = 5
    """Samples per generated config re-run one at a time for batch-1 latency (0 = skip)."""
    price_per_1k_output: float = 0.0006
    """USD per 1,000 output tokens, to express savings as cost."""
    out_dir: str = "runs/gsm8k"
    """Where the cache and the reports go (``runs/`` is not committed)."""
    force_cue: str = DEFAULT_CUE
    """Budget forcing: the text appended at the budget."""
    force_answer_tokens: int = DEFAULT_ANSWER_TOKENS
    """Budget forcing: the most tokens generated after the cue."""
    instruction_budgets: tuple[int, ...] | None = None
    """The budgets ``instruction-budget`` runs at (one generation of every question each);
    None: every budget. A subset of ``budgets``."""

    def __post_init__(self) -> None:
        ratios = tuple(sorted({check_ratio(r) for r in self.ratios} | {1.0}, reverse=True))
        object.__setattr__(self, "ratios", ratios)
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise InvalidInputError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
        if not self.budgets or any(int(b) <= 0 for b in self.budgets):
            raise InvalidInputError(f"budgets must be positive token counts, got {self.budgets}")
        object.__setattr__(self, "budgets", tuple(sorted({int(b) for b in self.budgets})))
        if self.instruction_budgets is not None:
            wanted = tuple(sorted({int(b) for b in self.instruction_budgets}))
            if not wanted or not set(wanted) <= set(self.budgets):
                raise InvalidInputError(
                    f"instruction budgets {wanted} must be among the budgets {self.budgets}"
                )
            object.__setattr__(self, "instruction_budgets", wanted)
        if self.limit is not None and self.limit <= 0:
            raise InvalidInputError(f"limit must be positive, got {self.limit}")
        if self.batch_size <= 0 or self.shots < 0 or self.latency_samples < 0:
            raise InvalidInputError("batch_size must be > 0; shots and latency_samples >= 0")
        if self.adapter is not None and self.base_url is not None:
            raise InvalidInputError(
                "--adapter is for local models; through --base-url the server applies its adapter"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise InvalidInputError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        kind = self.scorer.split(":", 1)[0]
        if kind not in SCORER_NAMES or (kind == "classifier" and ":" not in self.scorer):
            raise InvalidInputError(
                f"scorer must be heuristic, self-info, self-info:MODEL or classifier:DIR, got {self.scorer!r}"
            )
        if not self.force_cue.strip() or self.force_answer_tokens <= 0:
            raise InvalidInputError("force_cue must not be blank; force_answer_tokens must be > 0")
        if self.adapter is not None and not (Path(self.adapter) / "adapter_config.json").is_file():
            raise InvalidInputError(f"--adapter {self.adapter} has no adapter_config.json")


@dataclass
class Sample:
    """One problem under one (method, ratio): what was asked and what came back."""

    problem: gsm8k.Problem
    prompt: Prompt
    prompt_tokens: int
    generation: Generation | None = None
    derived_from: str | None = None
    """For truncation: the method whose generation is cut."""
    by_budget: dict[int, Generation] = field(default_factory=dict)
    """Budget forcing: the (forced) generation at each budget."""


@dataclass
class Config:
    method: str
    ratio: float
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    """Generation time in this run (0 when every sample came from the cache)."""
    throughput_key: str = ""
    latencies: list[Generation] = field(default_factory=list)


class Runner:
    def __init__(
        self,
        config: EvalConfig,
        generator: Generator,
        target: TextTokenizer,
        dataset: gsm8k.Dataset,
        shots: tuple[gsm8k.Problem, ...],
        delimiter: str | None,
        progress: bool = True,
    ):
        self.config, self.generator, self.target, self.dataset = config, generator, target, dataset
        self.shots, self.delimiter, self.progress = shots, delimiter, progress
        self.cache = GenerationCache(Path(config.out_dir) / "cache.jsonl")
        self.throughput = ThroughputLog(Path(config.out_dir) / "throughput.jsonl")
        self.max_budget = max(config.budgets)
        self.derives_budgets = hasattr(generator, "tokenizer")

    # -- prompts --------------------------------------------------------------------------
    def _count_prompt(self, messages: list[dict[str, Any]]) -> int:
        return chat_prompt_tokens(self.target, messages)

    def prompts(self, method: str, ratio: float, mean_cot: float) -> list[Prompt]:
        from tokenskip.cot_control import apply_cot_ratio
        from tokenskip.ratio_prompt import ratio_suffix

        out = []
        shots = self.shots
        if method == "prompt-compression" and ratio < 1.0:
            shots = tuple(self._compressed_shots(ratio))
        for p in self.dataset.problems:
            if method == "exemplar-selection" and ratio < 1.0:
                shots = self._selected_shots(p.question, ratio)
            messages = gsm8k.build_messages(p.question, shots=shots)
            if method == "tokenskip":
                if self.config.base_url:
                    out.append(
                        Prompt(
                            tuple(messages),
                            extra_body={"tokenskip": {"cot_ratio": ratio, "prompt_ratio": None}},
                        )
                    )
                else:
                    out.append(
                        Prompt(
                            tuple(messages),
                            suffix=ratio_suffix(ratio, self.delimiter),
                            adapter=True,
                        )
                    )
            elif method == "instruction" and ratio < 1.0:
                concise, _ = apply_cot_ratio(
                    messages, ratio, delimiter=None, reference_tokens=max(1, round(mean_cot))
                )
                out.append(Prompt(tuple(concise)))
            else:
                out.append(Prompt(tuple(messages)))
        return out

    def _compressed_shots(self, ratio: float) -> list[gsm8k.Problem]:
        """Every exemplar compressed at γ, question and solution (LLMLingua's setting): the
        question with the prompt guards, the solution's reasoning with the chain-of-thought
        guards and its ``#### N`` line verbatim."""
        from dataclasses import replace

        from tokenskip.compress import compress, compress_cot

        scorer = self._scorer()
        return [
            replace(
                s,
                question=compress(s.question, ratio, tokenizer=self.target, scorer=scorer).text,
                solution=compress_cot(
                    gsm8k.strip_calculator(s.solution), ratio, tokenizer=self.target, scorer=scorer
                ).text,
            )
            for s in self.shots
        ]

    def _selected_shots(self, question: str, ratio: float) -> tuple[gsm8k.Problem, ...]:
        """The exemplars most relevant to ``question``, whole, within γ of their tokens."""
        from tokenskip.relevance import select_exemplars

        texts = [f"{s.question}\n{gsm8k.strip_calculator(s.solution)}" for s in self.shots]
        if getattr(self, "_shot_counts", None) is None:
            self._shot_counts = [self.target.count(t) for t in texts]
        kept = select_exemplars(texts, question, ratio, self._shot_counts)
        return tuple(self.shots[i] for i in kept)

    def _scorer(self) -> Any:
        if getattr(self, "_scorer_obj", None) is None:
            from tokenskip.models import load_model
            from tokenskip.scorers import (
                CachedScorer,
                HeuristicScorer,
                SelfInfoScorer,
                TokenClassifierScorer,
            )

            kind, _, where = self.config.scorer.partition(":")
            if kind == "heuristic":
                scorer: Any = HeuristicScorer(self.target)
            elif kind == "classifier":
                scorer = TokenClassifierScorer.from_pretrained(where)
            else:
                loaded = load_model(where or "smollm2")
                scorer = SelfInfoScorer(
                    loaded.model, TextTokenizer(loaded.tokenizer, where or "smollm2")
                )
            self._scorer_obj = CachedScorer(scorer)
        return self._scorer_obj

    # -- generation -----------------------------------------------------------------------
    def _key(self, prompt: Prompt, budget: int, latency: bool = False) -> str:
        if prompt.continuation:
            return sample_key(
                generator=self.generator.name,
                adapter=self.config.adapter,
                messages=prompt.with_suffix(),
                adapter_on=prompt.adapter,
                continuation=list(prompt.continuation),
                budget=budget,
            )
        return sample_key(
            generator=self.generator.name,
            adapter=self.config.adapter,
            messages=prompt.with_suffix(),
            extra=prompt.extra_body,
            adapter_on=prompt.adapter,
            budget=budget,
            latency=latency,
        )

    def generate(self, cfg: Config, budgets: list[int], latency: bool = True) -> None:
        """Fill every sample's generation for each budget run (cached samples are skipped)."""
        cfg.throughput_key = sample_key(
            samples=[self._key(s.prompt, b) for s in cfg.samples for b in budgets],
            batch_size=self.config.batch_size,
        )
        for budget in budgets:
            todo = [
                i
                for i, s in enumerate(cfg.samples)
                if self.cache.get(self._key(s.prompt, budget)) is None
            ]
            if todo:
                bar = progress_bar(
                    len(todo), f"{cfg.method} γ={cfg.ratio:g} cap {budget}", self.progress
                )
                prompts = [cfg.samples[i].prompt for i in todo]

                def store(
                    j: int,
                    g: Generation,
                    prompts: list[Prompt] = prompts,
                    budget: int = budget,
                    bar: Any = bar,
                ) -> None:
                    self.cache.put(self._key(prompts[j], budget), g)
                    bar.update(1)

                started = time.perf_counter()
                results = self.generator.generate(prompts, budget, on_result=store)
                wall = time.perf_counter() - started
                cfg.wall_s += wall
                self.throughput.add(
                    cfg.throughput_key, wall, sum(g.output_tokens for g in results), len(todo)
                )
                bar.close()
        for s in cfg.samples:
            s.generation = self.cache.get(self._key(s.prompt, budgets[-1]))
        n = min(self.config.latency_samples, len(cfg.samples)) if latency else 0
        for s in cfg.samples[:n]:
            key = self._key(s.prompt, budgets[-1], latency=True)
            g = self.cache.get(key)
            if g is None:
                g = self.generator.generate([s.prompt], budgets[-1])[0]
                self.cache.put(key, g)
            cfg.latencies.append(g)

    def at_budget(self, s: Sample, budget: int) -> tuple[str, bool, int]:
        """(text, finished, output tokens) of a sample's generation capped at ``budget``."""
        g = s.generation if self.derives_budgets else self.cache.get(self._key(s.prompt, budget))
        assert g is not None
        if self.derives_budgets and g.output_tokens > budget:
            text = self.generator.tokenizer.decode(
                list(g.token_ids[:budget]), skip_special_tokens=True
            )
            return text, False, budget
        return g.text, g.finished, g.output_tokens

    def truncated(self, text: str, ratio: float) -> str:
        """The first ``ratio`` of a text's target tokens."""
        enc = self.target.encode(text)
        keep = round(ratio * len(enc.ids))
        return text[: enc.offsets[keep - 1][1]] if keep > 0 else ""

    # -- the run --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c = self.config
        configs: list[Config] = []
        original = self._config("original", 1.0, 0.0)
        self.generate(original, self._gen_budgets())
        configs.append(original)
        mean_cot = mean(
            [
                self.target.count(gsm8k.cot_and_answer(self.at_budget(s, self.max_budget)[0])[0])
                for s in original.samples
            ]
        )
        skipped: dict[str, str] = {}
        # forcing last: tokenskip-forcing reuses the tokenskip γ = 1.0 run when there is one
        for method in sorted(c.methods, key=lambda m: m in FORCING):
            if method == "original":
                continue
            reason = self._not_applicable(method)
            if reason:
                skipped[method] = reason
                continue
            if method == "budget-forcing":
                configs.append(self.force(original))
                continue
            if method == "tokenskip-forcing":
                configs.append(self.force(self._tokenskip_full(configs, mean_cot), method))
                continue
            if method == "instruction-budget":
                configs.append(self.instruct_per_budget(original))
                continue
            for ratio in c.ratios:
                if ratio == 1.0 and method in (
                    "instruction",
                    "prompt-compression",
                    "exemplar-selection",
                    "truncation",
                ):
                    continue  # identical to the original run
                cfg = self._config(method, ratio, mean_cot)
                if method == "truncation":
                    for s, o in zip(cfg.samples, original.samples):
                        s.generation, s.derived_from = o.generation, "original"
                else:
                    self.generate(cfg, self._gen_budgets())
                configs.append(cfg)
        return self.summarize(configs, original, skipped)

    def instruct_per_budget(self, original: Config) -> Config:
        """The instruction with each cap as its token budget, generated at that cap."""
        from tokenskip.cot_control import INSTRUCTION

        cfg = Config("instruction-budget", 1.0)
        cfg.samples = [Sample(s.problem, s.prompt, s.prompt_tokens) for s in original.samples]
        for b in self.budgets_of(cfg):
            run = Config("instruction-budget", 1.0)
            for s in original.samples:
                messages = [dict(m) for m in s.prompt.messages]
                text = INSTRUCTION.format(budget=b)
                if messages and messages[0].get("role") == "system":
                    messages[0]["content"] = f"{messages[0]['content']}\n\n{text}"
                else:
                    messages.insert(0, {"role": "system", "content": text})
                prompt = Prompt(tuple(messages))
                run.samples.append(Sample(s.problem, prompt, self._count_prompt(list(messages))))
            self.generate(run, [b], latency=False)
            for mine, got in zip(cfg.samples, run.samples):
                assert got.generation is not None
                mine.by_budget[b] = got.generation
                mine.prompt_tokens = got.prompt_tokens
            cfg.wall_s += run.wall_s
        return cfg

    def _tokenskip_full(self, configs: list[Config], mean_cot: float) -> Config:
        """The adapter's γ = 1.0 run: the one already in ``configs``, else run (and reported)."""
        for cfg in configs:
            if cfg.method == "tokenskip" and cfg.ratio == 1.0:
                return cfg
        cfg = self._config("tokenskip", 1.0, mean_cot)
        self.generate(cfg, self._gen_budgets())
        configs.append(cfg)
        return cfg

    def force(self, original: Config, method: str = "budget-forcing") -> Config:
        """Budget forcing at every budget on ``original``'s reasoning (see the module
        docstring); ``original`` is the base run, or the adapter's γ = 1.0 run."""
        c = self.config
        cfg = Config(method, 1.0)
        cfg.samples = [Sample(s.problem, s.prompt, s.prompt_tokens) for s in original.samples]
        if not self.derives_budgets:  # a server forces: one generation per budget
            for b in c.budgets:
                knob = {"cot_method": "budget-forcing", "cot_budget": b}
                knob["force_cue"], knob["force_answer_tokens"] = c.force_cue, c.force_answer_tokens
                run = Config("budget-forcing", 1.0)
                run.samples = [
                    Sample(
                        s.problem,
                        Prompt(s.prompt.messages, extra_body={"tokenskip": knob}),
                        s.prompt_tokens,
                    )
                    for s in original.samples
                ]
                self.generate(run, [b + c.force_answer_tokens + 16], latency=False)
                for mine, got in zip(cfg.samples, run.samples):
                    assert got.generation is not None
                    mine.by_budget[b] = got.generation
                cfg.wall_s += run.wall_s
            return cfg
        tok = self.generator.tokenizer
        cue_ids = tuple(tok.encode(c.force_cue, add_special_tokens=False))
        todo: list[tuple[Sample, int, Prompt]] = []
        for mine, s in zip(cfg.samples, original.samples):
            g = s.generation
            assert g is not None
            for b in c.budgets:
                text, finished, n = self.at_budget(s, b)
                if finished or BudgetForcing.answered(text):
                    mine.by_budget[b] = Generation(text, n, finished, 0.0, g.token_ids[:n])
                    continue
                prompt = Prompt(
                    s.prompt.messages,
                    s.prompt.suffix,
                    s.prompt.adapter,
                    continuation=tuple(g.token_ids[:b]) + cue_ids,
                )
                todo.append((mine, b, prompt))
        run = Config(method, 1.0)
        run.samples = [Sample(m.problem, p, 0) for m, _, p in todo]
        if run.samples:
            self.generate(run, [c.force_answer_tokens], latency=False)
        cfg.wall_s = run.wall_s
        for (mine, b, prompt), got in zip(todo, run.samples):
            answer = got.generation
            assert answer is not None
            ids = prompt.continuation + answer.token_ids
            mine.by_budget[b] = Generation(
                tok.decode(list(ids), skip_special_tokens=True),
                len(ids),
                answer.finished,
                answer.seconds,
                ids,
            )
        cfg.throughput_key = run.throughput_key
        return cfg

    def budgets_of(self, cfg: Config) -> tuple[int, ...]:
        """The budgets a config is reported at (``instruction-budget``: those it ran at)."""
        if cfg.method == "instruction-budget" and self.config.instruction_budgets:
            return self.config.instruction_budgets
        return self.config.budgets

    def _gen_budgets(self) -> list[int]:
        return [self.max_budget] if self.derives_budgets else list(self.config.budgets)

    def _not_applicable(self, method: str) -> str | None:
        if method == "tokenskip" and not (self.config.adapter or self.config.base_url):
            return "needs --adapter (a TokenSkip LoRA) or --base-url of a server that applies cot_ratio"
        if method == "tokenskip-forcing" and not self.config.adapter:
            return (
                "needs --adapter: it forces the adapter's own reasoning, which only a local run "
                "can stop and continue (through --base-url use budget-forcing)"
            )
        if method == "prompt-compression" and self.config.shots == 0:
            return "needs --shots > 0 (it compresses the k-shot exemplars)"
        if method == "exemplar-selection" and self.config.shots == 0:
            return "needs --shots > 0 (it chooses among the k-shot exemplars)"
        return None

    def _config(self, method: str, ratio: float, mean_cot: float) -> Config:
        prompts = self.prompts("original" if method == "truncation" else method, ratio, mean_cot)
        cfg = Config(method, ratio)
        for p, prompt in zip(self.dataset.problems, prompts):
            cfg.samples.append(Sample(p, prompt, self._count_prompt(prompt.with_suffix())))
        return cfg

    def evaluate(self, cfg: Config, s: Sample, budget: int) -> dict[str, Any]:
        if cfg.method in (*FORCING, "instruction-budget"):
            g = s.by_budget[budget]
            text, finished, output_tokens = g.text, g.finished, g.output_tokens
        else:
            text, finished, output_tokens = self.at_budget(s, budget)
        if cfg.method == "truncation":
            text = self.truncated(text, cfg.ratio)
            output_tokens = self.target.count(text)
        predicted = gsm8k.extract_answer(text)
        return {
            "correct": gsm8k.is_correct(predicted, s.problem.answer),
            "predicted": predicted,
            "finished": finished,
            "cot_tokens": self.target.count(gsm8k.cot_and_answer(text)[0]),
            "output_tokens": output_tokens,
            "text": text,
        }

    def summarize(
        self, configs: list[Config], original: Config, skipped: dict[str, str]
    ) -> dict[str, Any]:
        c = self.config
        per_sample: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
        for cfg in configs:
            for b in self.budgets_of(cfg):
                per_sample[(cfg.method, cfg.ratio, b)] = [
                    self.evaluate(cfg, s, b) for s in cfg.samples
                ]
        rows = []
        for cfg in configs:
            reference = "tokenskip" if cfg.method.startswith("tokenskip") else "original"
            row: dict[str, Any] = {
                "method": cfg.method,
                "ratio": cfg.ratio,
                "n": len(cfg.samples),
                "prompt_tokens_mean": mean([s.prompt_tokens for s in cfg.samples]),
                "budgets": {},
            }
            for b in self.budgets_of(cfg):
                evals = per_sample[(cfg.method, cfg.ratio, b)]
                ref = per_sample.get((reference, 1.0, b)) or per_sample[("original", 1.0, b)]
                base = per_sample[("original", 1.0, b)]
                correct = sum(e["correct"] for e in evals)
                saved = mean([e["output_tokens"] for e in base]) - mean(
                    [e["output_tokens"] for e in evals]
                )
                row["budgets"][str(b)] = {
                    "accuracy": correct / len(evals) if evals else 0.0,
                    "ci95": wilson_interval(correct, len(evals)),
                    "cut_off": mean([0.0 if e["finished"] else 1.0 for e in evals]),
                    "cot_tokens_mean": mean([e["cot_tokens"] for e in evals]),
                    "output_tokens_mean": mean([e["output_tokens"] for e in evals]),
                    "achieved_ratio": achieved_ratio(
                        [e["cot_tokens"] for e in evals], [e["cot_tokens"] for e in ref]
                    ),
                    "achieved_ratio_reference": f"{reference} γ=1.0",
                    "output_tokens_saved_per_sample": saved,
                    "cost_saved_per_1k_samples_usd": saved * c.price_per_1k_output,
                }
            if cfg.latencies:
                secs = [g.seconds for g in cfg.latencies]
                row["latency_batch1"] = {
                    "samples": len(secs),
                    "mean_s": mean(secs),
                    "median_s": median(secs),
                    "tokens_per_s": sum(g.output_tokens for g in cfg.latencies)
                    / max(sum(secs), 1e-9),
                }
            measured = self.throughput.total(cfg.throughput_key) if cfg.throughput_key else None
            if measured and measured["wall_s"] > 0:
                row["throughput"] = {
                    "batch_size": c.batch_size,
                    "wall_s": measured["wall_s"],
                    "output_tokens_per_s": measured["tokens"] / measured["wall_s"],
                    "samples_generated": measured["samples"],
                    "passes": measured["passes"],
                    "measured_in_this_run": cfg.wall_s > 0,
                }
            elif cfg.method != "truncation":
                row["throughput"] = {
                    "batch_size": c.batch_size,
                    "note": "all samples came from a cache without speed records: not measured",
                }
            rows.append(row)
        samples = [
            {
                "method": cfg.method,
                "ratio": cfg.ratio,
                "budget": b,
                "index": sample.problem.index,
                **e,
            }
            for cfg in configs
            for b in self.budgets_of(cfg)
            for sample, e in zip(cfg.samples, per_sample[(cfg.method, cfg.ratio, b)])
        ]
        return {"rows": rows, "skipped_methods": skipped, "samples": samples}


def run_eval(config: EvalConfig, *, command: str = "", progress: bool = True) -> dict[str, Any]:
    """Validate, load, generate (resumably), measure, and write JSON + Markdown + plots."""

    from tokenskip.evaluation.report import write_reports
    from tokenskip.models import load_tokenizer
    from tokenskip.provenance import provenance
    from tokenskip.runtime.generate import LocalGenerator, OpenAIGenerator

    dataset = gsm8k.load_gsm8k(config.data, split=config.split, limit=config.limit)
    shots: tuple[gsm8k.Problem, ...] = ()
    if config.shots:
        shots = gsm8k.shots_from(gsm8k.load_gsm8k(config.data, split="train"), config.shots)
    delimiter = None
    if config.adapter:
        delimiter = delimiter_in(config.adapter)
        if delimiter is None:
            raise InvalidInputError(
                f"--adapter {config.adapter} has no {ADAPTER_META} with a delimiter: it was not "
                "trained with TokenSkip's ratio prompt"
            )
    tokenizer_name = config.tokenizer or ("smollm2" if config.base_url else config.model)
    target = TextTokenizer(load_tokenizer(tokenizer_name), name=tokenizer_name)
    if config.base_url:
        generator: Any = OpenAIGenerator(
            config.base_url, config.model, api_key=config.api_key, concurrency=config.batch_size
        )
    else:
        generator = LocalGenerator(
            config.model, adapter=config.adapter, batch_size=config.batch_size, dtype=config.dtype
        )
    try:
        result = Runner(config, generator, target, dataset, shots, delimiter, progress).run()
    finally:
        generator.close()
    meta = {
        "model": config.model if not config.base_url else f"{config.model} via {config.base_url}",
        "adapter": config.adapter,
        "tokenizer": tokenizer_name,
        "dataset": {
            "source": portable_path(dataset.source),
            "split": config.split,
            "n": len(dataset.problems),
            "sha256": dataset.sha256,
        },
        "config": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in config.__dict__.items()
            if k != "api_key"
        },
        "command": command,
        **provenance(),
    }
    run = {"meta": portable_paths(meta), **result}
    run["paths"] = {k: str(v) for k, v in write_reports(run, Path(config.out_dir)).items()}
    return run
