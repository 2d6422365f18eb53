"""Real or generated? Two patches of one tissue, one real and one made by the model: the visitor says which is
generated, and sees how everyone does against chance."""
import streamlit as st

from ddpm.data import CLASS_NAMES
from ddpm.figures import QUIZ_SCALE, quiz_round_figure, quiz_score_figure
from ddpm.serving.quiz_pool import MAX_USES, pool_spec
from ddpm.serving.quiz_rounds import ANSWER_EVERY_S, ANSWERS_PER_HOUR, QuizSession, deal_round
from pages._shared import keep_training_alive, quiz_service, show, validation_images, visitor
from pages._models import PRETRAINED, load_model, model_fingerprint
from pages._compute import quiz_pool

POOL_WAIT_S = 60.0  # how long a visitor waits for a fresh generated patch before being asked to come back

keep_training_alive()
st.title("Real or generated?")
st.write("Two patches of the same tissue, shown the same way: one is real, the other was painted by the diffusion "
         "model. Which one is generated? Metrics such as FD compare thousands of patches at once; this asks your eye, "
         "one pair at a time.")

model, error = load_model(PRETRAINED)  # always the app's model: everyone's score is about the same weights
if model is None:
    st.error(f"The quiz's model cannot be loaded: {error}")
    st.stop()
weights = model_fingerprint(model)
if not model.conditional or weights is None:
    st.info(f"The quiz needs a tissue-conditional model with its weights in a folder, to show a generated and a real "
            f"patch of one tissue; the model in use ({model.checkpoint.source}) is not one. Set DDPM_MODEL to one, such "
            f"as the shipped default, and restart the app.")
    st.stop()
quiz, error = quiz_service()
if quiz is None:
    st.error(f"The quiz cannot store answers, so it is closed: {error}")
    st.stop()

session: QuizSession = st.session_state.setdefault("quiz", QuizSession())
sampling = pool_spec(model.checkpoint).describe()
real, real_warning = validation_images()
if session.view is None:
    pool = quiz_pool(model)
    with st.spinner("Making fresh generated patches (a few seconds, the first time after the server starts)…"):
        view = deal_round(quiz, pool, real, "val" if real_warning is None else "subset", session, visitor().id,
                          weights, sampling, timeout_s=POOL_WAIT_S)
    if view is None:
        why = f" (the last attempt failed: {pool.last_error})" if pool.last_error else ""
        st.warning(f"No generated patch is ready for you yet{why}. Press Next round in a few seconds.")
        st.button("Next round", key="quiz_next")
        st.stop()

view = session.view
figure = quiz_round_figure(view.left, view.right)
round_box = st.container(width=figure.layout.width)  # the buttons sit under their patches
round_box.markdown(f"**Which {CLASS_NAMES[view.tissue]} patch is generated?**")
show(figure, key="quiz_round", where=round_box, width="content")
where = "the PathMNIST validation split" if real_warning is None else "the bundled subset of the training split"
h, w = view.left.shape[:2]
st.caption(f"Both patches are {CLASS_NAMES[view.tissue]}, {h}×{w} pixels shown {QUIZ_SCALE}× larger. The real one is "
           f"from {where}; the generated one was made by the app's model ({sampling}).")

if session.outcome is None:
    left, right = round_box.columns(2)
    left.button("Left", key="quiz_left", on_click=session.answer, args=(quiz, visitor().id, "left"), width="stretch")
    right.button("Right", key="quiz_right", on_click=session.answer, args=(quiz, visitor().id, "right"), width="stretch")
    if session.notice:
        st.warning(session.notice)
else:
    outcome = session.outcome
    verdict = st.success if outcome.correct else st.info
    verdict(f"{'Right' if outcome.correct else 'Not this time'}: the generated patch is on the {outcome.generated_side}. "
            f"You answered in {outcome.seconds:.1f} s.")
    st.button("Next round", key="quiz_next", on_click=session.next_round, type="primary")
    everyone, yours = quiz.db.scores(weights), session.score()
    st.markdown(f"**You**: {yours.overall.describe()}.  \n**All visitors so far**: {everyone.overall.describe()}.")
    show(quiz_score_figure(everyone, CLASS_NAMES, yours), key="quiz_scores")
    st.caption("Each point is the share of right answers, each bar its 95% Wilson interval. 50% is chance: people who "
               "cannot tell the two apart name the right side half the time, so a bar across the dashed line is no "
               "evidence that anyone can.")

with st.expander("What this teaches, and how the answers are kept"):
    st.markdown(f"""
A generative model is judged by numbers (FD, precision, recall on the Compare page) and, in the end, by people.
In a published reader study, pathologists shown real and latent-diffusion-generated lymph-node patches (PCam) told them
apart barely better than a coin: median sensitivity and specificity 0.55 (Osorio et al., *Diagnostics* 2024,
14(13):1442). Here anyone can try on 28×28 colorectal tissue. Near 50% means the model's patches pass a glance;
it does not make them diagnostic evidence.

How it is run: the side of the generated patch is drawn at random on the server for each round and is not in the page
until you answer. Generated patches are made ahead of time in small batches; you never see the same one twice, but one
patch may be shown to up to {MAX_USES} visitors before it is replaced. Each answer is stored anonymously (a random round
id, the tissue, the model's weights sha256 `{weights[:12]}…`, the sides, right or wrong, seconds taken, time; no name
or address); at most one answer every {ANSWER_EVERY_S:g} s and {ANSWERS_PER_HOUR} an hour count.
{f"On this server {quiz.hub_note}." if quiz.hub_note else ""}
""")
