# Option defaults shared by the corpus recipes (voxceleb, cnceleb, librispeech); sourced by run.sh after
# `recipe_dir` is set and before its corpus-specific options, so tools/parse_options.sh accepts
# `--name value` for every variable below. A recipe may override any of them before parsing.
stage=1
stop_stage=8
data=data
exp=exp
imbalance=1                      # 1: natural counts; > 1 builds a long-tailed training subset
protocol=""                      # lt (with --imbalance R > 1): also the balanced control and the tail cost
                                 # (recipes/common/protocol.sh, docs/recipes.md)
val_per_speaker=2                    # iden val utterances per training speaker (chooses TDE's alpha)
test_per_speaker=4                   # iden test utterances per training speaker (identification columns)
conf_dir="$(cd "$recipe_dir/../conf" && pwd)"   # recipes/conf: one YAML per system, shared by the corpora
gpus=""                          # GPUs per node for torchrun ("" = CPU / one process)
nnodes=1
node_rank=0
master_addr=localhost
master_port=29500
num_avg=10                       # last epochs averaged into avg_model.pt
many=100                         # shot groups: Many > many, Few < few training utterances
few=20
alphas=""                        # TDE alphas tried in stage 6, e.g. 0,0.5,1 ("": the library's 0,0.25,...,3)
alpha_on=iden_val                # TDE alpha by iden_val (accuracy), dev_eer / dev_min_dcf (seen-speaker dev list)
seen_trials=40000                # seen-speaker lists (iden test / iden val): at most this many trials ...
seen_target_ratio=0.5            # ... at this target ratio (all target pairs when the split has fewer)
seen_same_session_ok=false       # true: seen-speaker targets may come from one session (video, chapter, genre)
seeds=""                         # e.g. "0 1 2": each system trained once per seed, in exp/<system>_seed<k>
baseline=""                      # the system the report compares the others with ("": the first of --systems)
per_seed=false                   # the report also lists every seed's rows
asnorm_top=dev                   # AS-norm cohort top-N: a count, a share of the cohort (0.1), or dev: chosen by
                                 # minDCF on the seen-speaker dev list (a large share can raise minDCF)
lm_conf="$conf_dir/lm.yaml"      # large-margin fine-tuning overlay of the BASE+lm systems (stage 3)
lm_num_avg=3                     # last LM epochs averaged into the +lm avg_model.pt
extract_mode=bucket              # equal-fbank-length batches: exact's embeddings (1 - cos < 3e-7, EER unchanged;
                                 # docs/scale.md) much faster on GPU; --extract_mode exact reproduces bit for bit
extract_workers=""               # extraction's audio-reading workers ("": none on CPU, where the model's threads
                                 # need the cores, 2 on GPU; docs/scale.md)
nj=8
seed=0
musan=""                         # MUSAN root (noise / music / babble augmentation)
rirs=""                          # RIRS_NOISES/simulated_rirs
train_overrides=""               # your key=value config overrides for every system (after the corpus's)
init_from=""                     # an experiment dir (spkcausal import-checkpoint, or a trained one): every system
                                 # starts from its extractor with a new head (train.init_from; the system's model
                                 # section gives way to the source's). With --systems finetune_pretrained: the
                                 # fine-tuning recipe of docs/models.md. Absolute, or relative to where you run
caption=""
