"""Typed configuration: one dataclass per stage family, loaded from a preset plus overrides.

Every knob lives here with its default and a description; presets (configs/*.yaml) only change
values. Unknown keys and wrongly typed values are errors that name the key.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = REPO_ROOT / "configs"
DATA_DIR_ENV = "ECR_DATA_DIR"
Bf16 = Literal["auto", True, False]  # a precision knob: "auto" = bf16 where the hardware runs it natively (ecr_ray/precision.py)


class ConfigError(ValueError):
    """A preset or override that does not fit the typed config."""


def _knob(default, doc: str, runtime: bool = False, cv: bool = False):
    """A config value with its description; `runtime` knobs change speed or resources, never outputs,
    so stage hashes leave them out (see `output_values`); `cv` knobs decide only the cross-validation
    (`ecr-ray ablations`), so only a stage naming them hashes them: a new one retrains no shipped model."""
    meta = {"doc": doc, "runtime": runtime, "cv": cv}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _section(cls, doc: str, **values):
    """A sub-config with this section's own defaults."""
    return field(default_factory=lambda: cls(**values), metadata={"doc": doc, "runtime": False})


@dataclass
class ActorPool:
    """A Ray Data actor pool: every `map_batches` over actors takes one (`raytools.map_actors`)."""
    actors: int = _knob(1, "Ray Data actors", runtime=True)
    cpus: float = _knob(0.5, "CPUs per actor (below 1 so reads and writes still schedule on 2 cores); torch threads: these, rounded, at least 1",
                        runtime=True)
    gpus: float = _knob(0.0, "GPUs per actor (the model moves to its GPU; a fraction shares one); 0: CPU only", runtime=True)
    batch_size: int = _knob(64, "rows per batch", runtime=True)
    stall_s: float = _knob(6 * 3600.0, "seconds without a finished batch before Ray Data fails the pool (-1: never; Ray's own 30 min "
                                       "is shorter than a 1.5B seeker's batch on 2 AVX2 cores)", runtime=True)

    @property
    def threads(self) -> int:
        """Torch threads of each actor: its CPUs rounded, at least one."""
        return max(1, round(self.cpus))


@dataclass
class TrainKnobs:
    """A Ray Train run: the optimiser, the data order and the workers (`raytools.fit`)."""
    epochs: int = _knob(1, "training epochs (at most, where early stopping applies)")
    lr: float = _knob(1e-3, "AdamW learning rate")
    weight_decay: float = _knob(0.0, "AdamW weight decay")
    batch_size: int = _knob(32, "examples per step per worker")
    seed: int = _knob(0, "initialisation and shuffling seed")
    num_workers: int = _knob(1, "Ray Train workers (DDP; gloo on CPU, NCCL on GPU)")
    use_gpu: bool = _knob(False, "train on GPUs (one per worker)")
    cpus_per_worker: float = _knob(1.0, "CPUs reserved per worker", runtime=True)
    max_failures: int = _knob(2, "worker failures survived by resuming from the last checkpoint", runtime=True)


@dataclass
class DataConfig:
    data_dir: str | None = _knob(None, f"root of the shared data; None: ${DATA_DIR_ENV}, else ../shared/data beside the checkout")
    pool_file: str = _knob("redial/raw/train_split_pool_dedup.jsonl", "raw ReDial jsonl split into train/dev (relative to data_dir)")
    movies_dir: str = _knob("redial/raw", "folder with movies_with_mentions.csv (the ReDial movie catalogue)")
    movie_info_file: str | None = _knob("redial/raw/id2info.json", "movie metadata (year, genres, director, plot) for the chat page's movie cards; None: no cards")
    kg_dir: str = _knob("redial/kg/kgA", "DBpedia subgraph folder (entity2id, relation2id, dbpedia_subkg, item_ids)")
    dev_fraction: float = _knob(0.1, "share of pool dialogues in the dev split, chosen by a hash of conversationId")
    split_seed: int = _knob(0, "salt of the train/dev hash; change it for another deterministic split")
    max_dialogues: int | None = _knob(None, "use only the first N pool dialogues by conversationId (None: all)")
    max_reject_fraction: float = _knob(0.05, "fail a file when more than this share of its lines is quarantined")
    split_files: dict[str, str] = _knob({}, "extra named splits: name -> raw ReDial jsonl path (e.g. test)")
    allow_pool_overlap: bool = _knob(False, "prepare a named split that shares dialogues with the training pool (refused by default, "
                                            "naming the shared conversationIds: evaluating on training dialogues flatters every figure)")
    unicrs_turns_file: str = _knob("redial/processed/unicrs_kgA/valid_data_processed.jsonl", "UniCRS entity lists for the linking report")
    unicrs_dialogues_file: str = _knob("redial/raw/train_split_subsets/cfcrs_unicrs_valid_data.jsonl", "the raw dialogues behind unicrs_turns_file")
    link_pool: ActorPool = _section(ActorPool, "entity linking of dialogues (Ray Data; larger batches amortise the arrow<->python conversion)",
                                    batch_size=256)

    def root(self) -> Path:
        """The data directory, or a ConfigError that names the setting."""
        candidates = [self.data_dir, os.environ.get(DATA_DIR_ENV), REPO_ROOT.parent / "shared" / "data"]
        for candidate in candidates:
            if candidate and (Path(candidate) / self.pool_file).exists():
                return Path(candidate).resolve()
        tried = ", ".join(str(c) for c in candidates if c)
        raise ConfigError(
            f"no ReDial data found (looked for {self.pool_file} under: {tried}); "
            f"set {DATA_DIR_ENV}=/path/to/shared/data or --set data.data_dir=..."
        )

    def path(self, relative: str) -> Path:
        return self.root() / relative


@dataclass
class RayConfig:
    address: str | None = _knob(None, "Ray cluster address; None: $RAY_ADDRESS (set by `ray job submit`), else a local Ray in-process", runtime=True)
    num_cpus: int | None = _knob(None, "logical CPUs of the in-process local Ray (None: all cores)", runtime=True)
    object_store_mb: int = _knob(512, "object store of the in-process local Ray, MiB", runtime=True)


@dataclass
class ModelsConfig:
    allow_download: bool = _knob(False, "let hub names (e.g. 'gpt2') download; off: packaged models and local folders only")


@dataclass
class LLMConfig:
    base_url: str | None = _knob(None, "OpenAI-compatible endpoint, e.g. https://api.openai.com/v1; None: start the local Ray Serve LLM")
    model: str = _knob("smollm2-135m-instruct", "model name sent to the endpoint (and served by the local server)")
    api_key_env: str = _knob("OPENAI_API_KEY", "environment variable holding the API key (never logged); unused by the local server", runtime=True)
    concurrency: int = _knob(4, "requests in flight at once, over all the pool's actors", runtime=True)
    qps: float = _knob(8.0, "requests per second at most, over all the pool's actors", runtime=True)
    max_retries: int = _knob(4, "retries of a request on 429, 5xx, timeouts and connection errors (exponential backoff)", runtime=True)
    backoff_s: float = _knob(0.5, "first backoff; doubles on every retry", runtime=True)
    timeout_s: float = _knob(60.0, "per-request timeout", runtime=True)
    max_tokens: int = _knob(40, "answer length limit")
    temperature: float = _knob(0.0, "0: greedy")
    structured: bool = _knob(True, "ask for the answer's JSON schema (response_format json_schema: the local server enforces it by constrained decoding); false for an endpoint without structured outputs")
    max_failed_fraction: float = _knob(0.5, "fail the stage when more requests than this end without an answer", runtime=True)


@dataclass
class LLMServerConfig:
    host: str = _knob("127.0.0.1", "address of the local OpenAI-compatible server (LLM annotation when emotion.llm.base_url is unset)", runtime=True)
    port: int = _knob(8000, "port of the local OpenAI-compatible server", runtime=True)
    replicas: int = _knob(1, "replicas of the LLM deployment", runtime=True)
    replica_cpus: float = _knob(1.0, "CPUs per replica", runtime=True)


@dataclass
class ClassifierConfig:
    backbone: Literal["minilm", "gpt2"] = _knob("minilm", "text encoder")
    pretrained: str | None = _knob("minilm-l6", "weights: a packaged name, folder or (with models.allow_download) hub name; None: random init")
    gpt2_layers: int = _knob(2, "GPT-2 layers when randomly initialised")
    gpt2_hidden: int = _knob(128, "GPT-2 hidden size when randomly initialised")
    gpt2_heads: int = _knob(2, "GPT-2 attention heads when randomly initialised")
    max_length: int = _knob(64, "tokens per utterance")
    max_examples: int | None = _knob(None, "train on at most this many examples (None: all)")
    holdout_fraction: float = _knob(0.1, "share of examples held out for the metrics")
    train: TrainKnobs = _section(TrainKnobs, "Ray Train run", epochs=2, lr=5e-5, weight_decay=0.01, batch_size=32)


@dataclass
class EmotionConfig:
    source: Literal["teacher", "llm"] = _knob("teacher", "who labels the annotation sample: teacher (GoEmotions classifier) | llm")
    sample_size: int = _knob(5082, "user utterances annotated (the paper: 5,082)")
    sample_seed: int = _knob(0, "seed of the annotation sample")
    max_chars: int = _knob(1000, "longer utterances are cut to this many characters in the prompt")
    context_turns: int = _knob(4, "earlier utterances shown to the annotator")
    second_label_threshold: float = _knob(0.3, "a second label is kept when its probability reaches this")
    include_goemotions: bool = _knob(False, "train the classifier on GoEmotions too")
    eval_examples: int | None = _knob(None, "GoEmotions dev/test examples used for the teacher's metrics (None: all)")
    goemotions_dir: str = _knob("emotion/goemotions/original", "GoEmotions folder (labels.txt, train/dev/test.tsv)")
    annotate_pool: ActorPool = _section(ActorPool, "actors sending annotation requests; the cache is written batch by batch, "
                                        "so a crash loses at most a batch", actors=2, batch_size=16)
    infer_pool: ActorPool = _section(ActorPool, "classifier actors labelling every user utterance (a batch is sorted by length, "
                                     "then run 64 at a time)", batch_size=1024)
    llm: LLMConfig = _section(LLMConfig, "the annotating LLM endpoint (emotion.source=llm)")
    teacher: ClassifierConfig = _section(ClassifierConfig, "the GoEmotions teacher (emotion.source=teacher)")
    classifier: ClassifierConfig = _section(ClassifierConfig, "the emotion classifier trained on the annotations")
    stance: ClassifierConfig = _section(ClassifierConfig, "the stance model (stance-train): (a movie's title, the utterance naming it) -> "
                                        "liked / disliked / no stance, trained on the seekers' questionnaire answers of the training split "
                                        "and evaluated on the dev split (holdout_fraction unused)", max_length=96)


@dataclass
class PromptConfig:
    text_encoder: str | None = _knob(None, "prompt path text encoder (RoBERTa architecture): a folder or hub name; None: random init of the sizes below")
    lm: str | None = _knob(None, "frozen causal LM (GPT-2 architecture, e.g. microsoft/DialoGPT-small); None: random init with GPT-2's real tokenizer")
    layers: int = _knob(2, "layers of each randomly initialised model")
    hidden: int = _knob(64, "hidden size of each randomly initialised model")
    heads: int = _knob(2, "attention heads of each randomly initialised model")
    n_prefix: int = _knob(10, "prefix prompt vectors given to the causal LM")
    max_length: int = _knob(128, "context tokens (the most recent are kept)")


REC_KS = (1, 10, 50)  # Recall@k and Recall_True@k cut-offs (the paper's)
REC_METRICS = (*(f"recall@{k}" for k in REC_KS), *(f"recall_true@{k}" for k in REC_KS), "auc")
NEW_METRICS = tuple(f"recall_new@{k}" for k in REC_KS)  # Recall@k over targets the dialogue has not mentioned before
MEAN_RECALL = "mean_recall"  # the mean of Recall@1, @10 and @50 (the paper's cut-offs): a steadier selector than one
MEAN_RECALL_AUC = "mean_recall_auc"  # the mean of those and the AUC: ranking and liked over disliked together


@dataclass
class FeedbackWeights:
    """m(feedback): how much a target item's loss counts by what the seeker said of it (the paper's values)."""
    like: float = _knob(2.0, "the seeker liked the item")
    dislike: float = _knob(1.0, "the seeker disliked it")
    not_said: float = _knob(0.5, "the seeker did not say")


@dataclass
class RecConfig:
    context_encoder: Literal["minilm", "prompt"] = _knob("minilm", "dialogue context encoder: minilm (sentence embeddings, computed once and cached) | prompt (text encoder + frozen causal LM with KG/emotion prefix prompts)")
    context_model: str = _knob("minilm-l6", "sentence encoder of the minilm context path: a packaged name, folder or hub name")
    context_max_length: int = _knob(128, "context tokens given to the sentence encoder (the most recent are kept)")
    context_pool: ActorPool = _section(ActorPool, "actors embedding contexts (the minilm path; a batch is sorted by length, then "
                                      "run 32 at a time)", batch_size=256)
    hidden: int = _knob(128, "entity / user representation size")
    num_bases: int = _knob(8, "RGCN basis matrices (the paper: 8)")
    max_entities: int = _knob(32, "most recently mentioned entities kept per context")
    node_init: Literal["random", "ppmi-svd"] = _knob("ppmi-svd", "initial entity table: random | ppmi-svd (an SVD of the positive PMI of entity co-occurrence in the training dialogues, never the held-out ones that select the epoch)")
    pretrain_epochs: int = _knob(1, "epochs of entity-prediction pre-training before the recommendation epochs: every entity of every training utterance (both speakers) predicted among all entities from those before it (UniCRS/ECR)")
    dropout: float = _knob(0.1, "dropout on the entity states and the user vector while training")
    user_mixture: bool = _knob(False, "score items by a mixture of softmaxes: ECR's user vector and one per mentioned entity (its state read "
                                      "with the context), weighted by a learned gate; a sum over the entities' neighbourhoods, as counts are, "
                                      "where one vector's dot product must please every entity at once")
    recency_decay: float = _knob(0.8, "weight of a context entity per step back from the latest mention (the co-occurrence and global channels, and the co-occurrence baselines)")
    variant: Literal["paper", "hybrid"] = _knob("hybrid", "paper: ECR's recommender alone (RGCN entities, emotion-aware local entities "
                                                "and global emotion-related neighbours in the user vector, the context encoder, the "
                                                "feedback-weighted loss) | hybrid: that model trained the same way, plus the count/copy "
                                                "channels below with weights fitted for ranking, its score weighted by a factor fitted on the held-out dialogues")
    cooccurrence_channel: bool = _knob(True, "hybrid only: score log(1 + training dialogues an item occurs in) and log(1 + recency-weighted training dialogues it shares with the context's entities), each with a learned weight (counts leave the example's own dialogue out)")
    copy_channel: bool = _knob(True, "hybrid only: score items the context already mentions, last by the seeker or by the recommender, with learned weights (gated by the user's emotion towards the item when local_emotion)")
    local_emotion: bool = _knob(True, "fuse the user's emotion towards each mentioned entity into it (a zero-initialised fusion) and gate the copy channel by it")
    global_emotion: bool = _knob(True, "the emotion-related neighbours' distribution P(later entity | earlier entity): their representation "
                                       "joins the user vector with a learned weight (and, in the hybrid, their item score is a channel)")
    reweight: bool = _knob(True, "weight each target item's loss by m(feedback) (rec.feedback_weights)")
    entity_stance: bool = _knob(False, "a movie the user names carries the user's stance towards it (the stance model, stance-infer-<g>): its "
                                       "'like' and 'negative' emotions become P(liked) and P(disliked) of that movie, in the entity states, "
                                       "the emotion-weighted counts and the copy gate; in the hybrid a disliked movie's co-occurrence evidence counts against "
                                       "its neighbours (rec/channels.py DISLIKED_GRID); off: every entity of an utterance has the utterance's emotions (ECR)")
    feedback_weights: FeedbackWeights = _section(FeedbackWeights, "feedback-aware reweighting (rec.reweight)")
    beta: float = _knob(0.1, "β: an utterance's emotions are its labels with probability above this (the paper: 0.1); the others count zero; when none passes, the top label (as ECR)")
    max_emotions: int = _knob(3, "n_f: at most this many labels per utterance, the most likely; two mentions are emotion-related when their labels overlap (the paper: 3)")
    stop_fraction: float = _knob(0.1, "share of the training dialogues held out to select the epoch (never the reported split)")
    channel_fit_examples: int = _knob(6000, "hybrid: training examples (a seeded sample) the channel weights are fitted for ranking on")
    bias_lr: float = _knob(1e-2, "learning rate of the item bias and of the neighbours' weight in the user vector: they need larger steps "
                                 "than the embeddings (follows the same schedule)")
    warmup: float = _knob(0.1, "share of the training steps over which the learning rate rises linearly; it then decays along a cosine to 0")
    patience: int = _knob(2, "epochs without a better selection metric before stopping")
    early_stop_metric: Literal[(MEAN_RECALL, MEAN_RECALL_AUC, *REC_METRICS)] = _knob(MEAN_RECALL, "metric that selects the best epoch and fits the hybrid's weights (the channels' on training examples, the learned score's on the held-out training dialogues) (mean_recall: the mean of recall@1, @10 and @50, the paper's cut-offs: without R@1 the copy weights move freely in a direction that costs only R@1; mean_recall_auc: of those and the AUC, which sits at chance, 0.50-0.52, on the held-out dialogues in every epoch: noise in the selection)")
    eval_batch_size: int = _knob(256, "examples per evaluation batch", runtime=True)
    auc_batch_size: int = _knob(32, "examples per batch of the per-batch AUC (the paper's code averages AUC over evaluation batches of 32)")
    cv_folds: int = _knob(5, "folds of the cross-validation behind `ecr-ray ablations` (over the pool's dialogues)", cv=True)
    cv_entity_stance: bool = _knob(False, "`ecr-ray ablations` also trains full ECR reading each named movie's own stance (rec.entity_stance; "
                                          "needs the stance model), compared with ECR's reading on all examples and on those naming a disliked movie", cv=True)
    cv_emotion_ablations: bool = _knob(True, "`ecr-ray ablations` trains the four ablated variants too; false: full ECR alone (the hybrid, "
                                             "its paper variant and channels against the baselines) in a fifth of the time", cv=True)
    cv_also: dict[str, dict] = _knob({}, "`ecr-ray ablations` also trains full ECR with other rec knobs on the same folds, paired against it: "
                                         "label -> changes, e.g. {\"hidden 256\": {hidden: 256}} or {\"lr 1e-3\": {train: {lr: 1.0e-3}}}", cv=True)
    train: TrainKnobs = _section(TrainKnobs, "Ray Train run (epochs: at most, early stopping on held-out training dialogues)", epochs=10, lr=1e-3,
                                 weight_decay=0.01, batch_size=64)
    prompt: PromptConfig = _section(PromptConfig, "the prompt context path (rec.context_encoder=prompt)")


@dataclass
class GeneratorConfig:
    method: Literal["lora", "full"] = _knob("lora", "lora (Llama architecture + peft LoRA adapters) | full (GPT-2 architecture, every weight trained)")
    model: str | None = _knob("smollm2-135m-instruct", "base model: a packaged name, folder or (with models.allow_download) hub name; None with method=full: a random GPT-2 of the sizes below with GPT-2's real tokenizer")
    gpt2_layers: int = _knob(2, "GPT-2 layers when randomly initialised")
    gpt2_hidden: int = _knob(128, "GPT-2 hidden size when randomly initialised")
    gpt2_heads: int = _knob(2, "GPT-2 attention heads when randomly initialised")
    dtype: Literal["float32", "bfloat16", "float16"] = _knob("float32", "weights of a pretrained base (a 7B base needs 16 bits to fit a 24 GB GPU)")
    autocast_bf16: Bf16 = _knob(False, "training and validation matmuls in bfloat16 (torch.autocast) over float32 weights: 1.4x faster "
                                       "on CPUs with AMX, the same loss to 2-3 decimals, 88x slower where bf16 is emulated (AVX2 only); "
                                       "auto: only where native")
    lora_r: int = _knob(8, "LoRA rank")
    lora_alpha: int = _knob(16, "LoRA scaling numerator")
    lora_dropout: float = _knob(0.05, "dropout on the LoRA path")
    lora_targets: str = _knob("q_proj,v_proj", "comma-separated module names that get adapters")
    max_length: int = _knob(384, "tokens per training example (prompt + response); longer prompts lose their oldest context tokens")
    response_tokens: int = _knob(160, "training responses are cut to this many tokens")
    max_examples: int | None = _knob(None, "train on at most this many review examples (None: all)")
    holdout_fraction: float = _knob(0.05, "share of review examples held out for the validation loss")
    train: TrainKnobs = _section(TrainKnobs, "Ray Train run (lr: the paper's 5e-5 for Llama-2 LoRA, 1e-4 for DialoGPT)",
                                 epochs=1, lr=1e-4, weight_decay=0.01, batch_size=8)


@dataclass
class DecodingConfig:
    max_new_tokens: int = _knob(150, "response length limit (the paper: 150)")
    no_repeat_ngram_size: int = _knob(3, "no repeated n-grams of this size (the paper: 3; 0 off)")
    ngram_ban_prompt: bool = _knob(False, "the n-gram ban counts the prompt's n-grams too (the paper's generate(); a response then "
                                          "cannot say a title or fact the prompt gives) instead of the response's only")
    do_sample: bool = _knob(False, "sample (with temperature, top_p) instead of greedy")
    temperature: float = _knob(0.7, "sampling temperature")
    top_p: float = _knob(0.9, "nucleus sampling mass")
    repetition_penalty: float = _knob(1.0, "logits of tokens already in the prompt or response divided by this (1: off; a chat "
                                           "request's presence/frequency penalty overrides it)")
    repetition_penalty_prompt: bool = _knob(True, "the repetition penalty weighs the prompt's tokens too (generate()'s); false: the "
                                                  "response's own only, so the title and knowledge the prompt gives stay free to say")
    candidates: int = _knob(1, "batch responses: decode this many per prompt (the configured decoding, then samples at temperature "
                               "and top_p) and keep the best grounded: naming the item first, then naming fewer KG entities the prompt does not "
                               "support, then more of its knowledge (1: off; the chat API always decodes one)")
    more_candidates: int = _knob(0, "batch responses: a prompt none of whose candidates names the item gets this many more samples, "
                                    "and the best grounded of all is kept (0: off)")
    batch_bf16: Bf16 = _knob(False, "batch responses (gen-respond, gen-compare) decoded with bfloat16 weights: 1.4x faster at 128 rows on "
                                    "CPUs with AMX, far slower where bf16 is emulated; auto: only where native (chat replies keep float32: "
                                    "one row decodes slower in bfloat16)")
    name_item: bool = _knob(True, "a reply that reaches its first sentence end (or its end) without the item's title gets the title next and "
                                  "goes on from it: one streamed decode that names the item (the chat's and the batch's; the reports count "
                                  "how often it was put in)")
    title_fallback: bool = _knob(False, "batch responses: one that does not name the item (after the candidates) is decoded again "
                                        "starting from the item's title, with the configured decoding")
    trim_unsupported: bool = _knob(False, "batch responses: the chosen response loses its sentences that name a KG entity the prompt does not "
                                          "support, except those naming the item (needs `candidates` > 1 for the KG check)")


@dataclass
class GenConfig:
    train_reviews_file: str = _knob("redial/reviews/ecr_llama_train_converted.jsonl", "ECR's review training rows {context, resp, rec} (relative to data_dir)")
    extra_reviews_file: str | None = _knob("redial/reviews/ecr_ma_movie_reviews_processed_valid.json", "more reviews {movie_name, content} for the retrieval base only")
    max_reviews: int | None = _knob(None, "process only the first N reviews of each file (None: all)")
    min_sentence_words: int = _knob(4, "shorter sentences are dropped")
    emotion_threshold: float = _knob(0.5, "a sentence is emotional when a non-neutral emotion reaches this probability (or it ranks in "
                                          "min_emotional_share)")
    min_emotional_share: float = _knob(0.25, "the most emotional share of the sentences (by their strongest non-neutral probability) counts "
                                             "as emotional whatever emotion_threshold says, so an under-confident classifier still yields "
                                             "training data (0: the threshold alone)")
    sentence_pool: ActorPool = _section(ActorPool, "actors splitting reviews into sentences and linking their entities")
    review_pool: ActorPool = _section(ActorPool, "classifier actors scoring review sentences (a batch is sorted by length, then "
                                     "run 64 at a time)", batch_size=1024)
    max_entities: int = _knob(4, "entities in a prompt (the paper: 4)")
    max_triples: int = _knob(2, "KG triples in a prompt (the paper: 2)")
    context_turns: int = _knob(2, "latest dialogue utterances shown in a prompt")
    grounded_targets: bool = _knob(True, "train on grounded targets (gen/targets.py): a review's first 'this movie' becomes the title, "
                                         "sentences naming what the prompt does not support are dropped, a review that never names "
                                         "the item is left out; false: the review's emotional sentences as they are")
    sample_size: int = _knob(200, "dialogue turns answered per split (seeded sample of turns with a target item)")
    sample_seed: int = _knob(0, "seed of that sample")
    respond_pool: ActorPool = _section(ActorPool, "generation actors (prompts per batch, left-padded)", cpus=1.0, batch_size=8)
    decoding: DecodingConfig = _section(DecodingConfig, "decoding of responses (batch generation and the chat)")
    generator: GeneratorConfig = _section(GeneratorConfig, "the response generator and its training")


@dataclass
class IntervalConfig:
    samples: int = _knob(1000, "bootstrap resamples of whole dialogues behind every 95% interval (0: no intervals)")
    seed: int = _knob(0, "seed of the resampling")


@dataclass
class BaselineConfig:
    copy_bonus: float = _knob(1.0, "co-occurrence + copy: added to the log co-occurrence score of an item the context mentions")


@dataclass
class EvalConfig:
    intervals: IntervalConfig = field(default_factory=IntervalConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    score_sample: int = _knob(1000, "responses per variant scored by the LLM judge (seeded; the paper: 1,000), and turns of its validity check")
    score_seed: int = _knob(0, "seed of the scored sample")
    readings: dict[str, str] = _knob({}, "criterion -> how the judge is read: score (0-9 alone, the default) or pairwise (an in-process judge "
                                      "asked whether the reply beats the dataset's logged reply, both orders); chosen by `ecr-ray judge-check`")
    check_turns: int = _knob(100, "training-split turns (one per dialogue) `ecr-ray judge-check` checks the judge's validity on")
    score_pool: ActorPool = _section(ActorPool, "actors scoring (an in-process judge uses round(cpus) torch threads; "
                                     "against an endpoint they only wait)", cpus=0.25, batch_size=8)
    scorer: LLMConfig = _section(LLMConfig, "the LLM judge: base_url None runs `model` in-process (a packaged name or folder); "
                                 "an endpoint is read through top_logprobs, or JSON where it gives none", max_tokens=120)


@dataclass
class ServeConfig:
    model_name: str = _knob("ecr-ray", "model id the chat API answers to (GET /v1/models)", runtime=True)
    top_k: int = _knob(5, "recommended items returned per turn (a request may ask for 1-50 with `top_k`)", runtime=True)
    max_turns: int = _knob(40, "user and assistant messages a conversation may hold", runtime=True)
    max_message_chars: int = _knob(2000, "characters a message may hold", runtime=True)
    request_timeout_s: float = _knob(60.0, "a request that takes longer ends with 504", runtime=True)
    threads: int = _knob(2, "torch threads of each part's replica (a turn goes through the parts one after another)", runtime=True)
    max_batch: int = _knob(4, "chat requests a Generator replica decodes together (a request joins at the next step)", runtime=True)
    stream_interval_ms: float = _knob(0.0, "a streamed reply's text leaves the Generator at most this often after its first piece "
                                           "(the tokens between joined into one chunk; 0: every token)", runtime=True)
    token_env: str = _knob("ECR_SERVE_TOKEN", "environment variable holding the bearer token the API requires (unset: no token)", runtime=True)


@dataclass
class SimConfig:
    split: str = _knob("dev", "the pool split whose dialogues the simulated seekers come from")
    dialogues: int = _knob(30, "dialogues simulated (a seeded sample of those with a recommended KG movie)")
    seed: int = _knob(0, "seed of the sample and of the simulator's sampling")
    rounds: int = _knob(3, "rounds per dialogue: a seeker message, then the system's answer (iEvaLM: at most 5)")
    modes: str = _knob("attribute,free", "comma-separated: attribute (each message states one KG attribute of the targets) "
                                         "and/or free (free-form chit-chat), iEvaLM's two modes")
    systems: str = _knob("ecr-ray,ecr-ray without emotion,co-occurrence + copy,always target,random",
                         "comma-separated systems the same seekers talk to (the last two: the simulator's sanity checks)")
    retries: int = _knob(3, "times a seeker message that names a target is written again before the turn fails")
    max_words: int = _knob(30, "a seeker message is cut after this many words")
    score_replies: bool = _knob(True, "the LLM judge (eval.scorer) scores every system reply in its conversation (0-9, by score)")
    system_url: str | None = _knob(None, "a running `serve run`'s base URL (e.g. http://127.0.0.1:8000/v1): the ecr-ray system is asked "
                                         "there by the openai client (bearer token from serve.token_env); None: its parts in-process")
    pool: ActorPool = _section(ActorPool, "actors simulating dialogues, a batch of `batch_size` dialogues per call (each actor holds the "
                               "seeker model and every system); each dialogue is cached as its batch ends, so a stopped run resumes",
                               cpus=1.0, batch_size=10)
    llm: LLMConfig = _section(LLMConfig, "the simulator: base_url None runs `model` in-process (a packaged name or folder)",
                              max_tokens=48, temperature=0.7)


@dataclass
class Config:
    name: str = _knob("custom", "preset name, used for the default run directory", runtime=True)
    data: DataConfig = field(default_factory=DataConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    llm_server: LLMServerConfig = field(default_factory=LLMServerConfig)
    emotion: EmotionConfig = field(default_factory=EmotionConfig)
    rec: RecConfig = field(default_factory=RecConfig)
    gen: GenConfig = field(default_factory=GenConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    sim: SimConfig = field(default_factory=SimConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def output_values(cfg, path: str):
    """The value at a dotted config path with its runtime and cv knobs left out: what a stage hash covers
    (a path naming a knob itself gives its value)."""
    node = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return _outputs_only(node)


def _outputs_only(node):
    if not dataclasses.is_dataclass(node):
        return copy.deepcopy(node)
    return {f.name: _outputs_only(getattr(node, f.name)) for f in dataclasses.fields(node)
            if not (f.metadata.get("runtime") or f.metadata.get("cv"))}


def cv_knobs(section_cls, prefix: str) -> tuple[str, ...]:
    """The dotted paths of a section's `cv` knobs (what the cross-validation stage hashes besides the section)."""
    return tuple(f"{prefix}.{f.name}" for f in dataclasses.fields(section_cls) if f.metadata.get("cv"))


def from_dict(cls, values: dict):
    """A config section back from its asdict() form (what a Ray Train worker or a saved model gets)."""
    return _build(cls, values, "")


def with_changes(section, changes: dict, prefix: str):
    """A copy of config `section` with the nested `changes` applied, each checked as a preset's key would be (`prefix`:
    the section's path, for the errors)."""
    return _build(type(section), changes, prefix, section)


RETIRED = {  # removed knobs: a config a model was saved with may still hold them (ignored there), a preset may not
    "rec.channel_fit": "the hybrid's channel weights are always fitted for ranking, and the model trains without them (2026-12-03)",
    "rec.channel_lr": "the item bias' rate is rec.bias_lr; no channel weight trains any more (2026-12-03)",
    "rec.node_anchor": "an L2 pull of the entity table towards its PPMI-SVD start changed no cross-validated figure beyond noise (2026-12-06)",
}


def load_config(preset: str | Path | None = None, overrides: typing.Sequence[str] = (), base: dict | None = None) -> Config:
    """A preset (a path, or a name in configs/) or a `base` (a recorded Config.to_dict(): its RETIRED keys are
    dropped, so a model saved before a knob was removed still loads), and 'section.key=value' overrides (YAML values)."""
    values: dict = copy.deepcopy(base or {})
    for key in RETIRED:
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    if preset:
        path = Path(preset)
        if not path.exists() and (PRESETS_DIR / f"{preset}.yaml").exists():
            path = PRESETS_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError(f"config preset {preset!r} not found (known: {', '.join(p.stem for p in PRESETS_DIR.glob('*.yaml'))})")
        values = yaml.safe_load(path.read_text()) or {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not key=value")
        node = values
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return _build(Config, values, "")


def _build(cls, values: dict, prefix: str, default=None):
    """`cls` from `values`, missing keys from `default` (the enclosing section's default of it), else the class."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} should be a mapping, got {values!r}")
    default = default if default is not None else cls()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown and f"{prefix}{unknown[0]}" in RETIRED:
        raise ConfigError(f"config key {prefix}{unknown[0]} was removed: {RETIRED[prefix + unknown[0]]}")
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known in {prefix.rstrip('.') or 'config'}: {', '.join(sorted(known))})")
    kwargs = {}
    for name in known:
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, values.get(name, {}), f"{prefix}{name}.", getattr(default, name))
        elif name in values:
            kwargs[name] = _check(values[name], hint, f"{prefix}{name}")
        else:
            kwargs[name] = copy.deepcopy(getattr(default, name))
    return cls(**kwargs)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check(value, hint, key: str):
    """Accept a value of the declared type (ints for floats; None only for optional keys)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(f"config key {key} should be one of {', '.join(map(repr, typing.get_args(hint)))}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(h for h in options if h is not type(None))
        origin = typing.get_origin(hint)
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if isinstance(value, dict) and all(isinstance(k, key_type) and isinstance(v, value_type) for k, v in value.items()):
            return dict(value)
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint is float and isinstance(value, str) and _FLOAT.fullmatch(value):  # YAML 1.1 reads 5e-4 as a string
        return float(value)
    elif isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config key {key} should be {hint if typing.get_origin(hint) else getattr(hint, '__name__', hint)}, got {value!r}")


def describe(node=None, prefix: str = "", section: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) of every knob, for `ecr-ray config --describe`; [runtime]: not in stage hashes."""
    node = Config() if node is None else node
    rows = []
    for f in dataclasses.fields(node):
        value, doc = getattr(node, f.name), f.metadata.get("doc", "")
        if dataclasses.is_dataclass(value):
            rows += describe(value, f"{prefix}{f.name}.", doc or section)
        else:
            rows.append((f"{prefix}{f.name}", repr(value), (f"{section}: " if section else "") + doc + (" [runtime]" if f.metadata.get("runtime") else "")))
    return rows


def describe_markdown() -> str:
    """docs/configuration.md: every knob by section with its default, each preset's value where it sets one, and
    its description (`ecr-ray config --describe --markdown`; a unit test keeps the committed page fresh)."""
    presets = {p.stem: _flatten(yaml.safe_load(p.read_text()) or {}) for p in sorted(PRESETS_DIR.glob("*.yaml"))}
    lines = ["# Configuration", "",
             "<!-- generated by `ecr-ray config --describe --markdown > docs/configuration.md` from ecr_ray/config.py; do not edit -->", "",
             "Every knob of the typed config (`ecr_ray/config.py`) with its default, the value each preset in `configs/` gives it "
             "(blank: the default), and what it does. Set any of them with `--set key=value` (YAML values). Knobs marked "
             "[runtime] change speed or resources, never outputs: stage hashes leave them out, so changing one re-runs nothing.", ""]
    section = None
    for key, default, doc in describe():
        top = key.split(".")[0] if "." in key else "(top level)"
        if top != section:
            section = top
            lines += ["", f"## `{section}`", "", f"| key | default | {' | '.join(presets)} | description |",
                      f"|---|---|{'---|' * len(presets)}---|"]
        values = [f"`{presets[p][key]!r}`" if key in presets[p] else "" for p in presets]
        lines.append(f"| `{key}` | `{default}` | {' | '.join(values)} | {doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _flatten(values: dict, prefix: str = "", node=None) -> dict:
    """A preset's values by dotted key: a mapping is a section where the config has one, else a dict-valued knob."""
    node, out = Config() if node is None else node, {}
    for k, v in values.items():
        if isinstance(v, dict) and dataclasses.is_dataclass(getattr(node, k, None)):
            out.update(_flatten(v, f"{prefix}{k}.", getattr(node, k)))
        else:
            out[f"{prefix}{k}"] = v
    return out
