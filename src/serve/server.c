/*
 * server.c - `strata serve`: an OpenAI-compatible HTTP server on an
 * inference session (strata/infer.h).
 *
 * HTTP is libmicrohttpd's (Debian's libmicrohttpd-dev): a small C library
 * that has been kept for many years, parses requests, chunked bodies,
 * keep-alive and timeouts itself, and runs a thread per connection, so that
 * a request can wait for its tokens in plain blocking code.
 *
 * Threads:
 *   - connection threads (libmicrohttpd's): read a request, check it,
 *     tokenize its prompts, queue it as a call (one sequence per choice),
 *     then wait for its text (or stream it as it comes), watching the
 *     socket: a client that goes away cancels its sequences;
 *   - the scheduler: owns the session; between runs it ends cancelled
 *     sequences, releases finished ones and admits queued calls into free
 *     slots; a run (st_infer_run_while) streams every active sequence
 *     through the stages and stops when a queued call could be admitted;
 *   - the pipeline's threads call on_token after each token: the choice's
 *     text is decoded there, stop strings end it, and waiters are woken;
 *   - the main thread waits for SIGTERM/SIGINT/SIGHUP, then drains.
 * One mutex (server.mu) guards calls, choices, the queue and the metrics.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/utf8.h"
#include "serve/serve.h"
#include "strata/tokenizer.h"

extern const char sv_page_html[];
extern const size_t sv_page_html_len;

/* ---- metrics ---------------------------------------------------------------------- */

static const double ttft_le[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double tpot_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
#define N_TTFT (sizeof ttft_le / sizeof *ttft_le)
#define N_TPOT (sizeof tpot_le / sizeof *tpot_le)

typedef struct histogram {
    long bucket[16]; /* counts of observations <= le[i]; the last: all */
    double sum;
    long count;
} histogram;

static void observe(histogram *h, const double *le, size_t n, double x)
{
    for (size_t i = 0; i < n; i++)
        h->bucket[i] += x <= le[i];
    h->sum += x;
    h->count++;
}

enum { EP_COMPLETIONS, EP_CHAT, EP_MODELS, EP_HEALTH, EP_METRICS, EP_PAGE, EP_OTHER, EP_N };
static const char *const ep_names[] = {"/v1/completions", "/v1/chat/completions", "/v1/models",
                                       "/health", "/metrics", "/", "other"};
static const int codes[] = {200, 400, 401, 404, 405, 413, 422, 500, 503};
#define N_CODES (sizeof codes / sizeof *codes)

/* ---- calls and choices ---------------------------------------------------------- */

typedef struct call call;

typedef struct choice {
    call *call;
    int index, prompt;
    int id;        /* the session's sequence, -1 before admission and after release */
    bool done;     /* finished: no more text */
    st_infer_finish finish;
    char *text;    /* the generated text so far (bytes; cut at a stop string) */
    size_t len;
    size_t sent;   /* streaming: bytes sent */
    long n_gen;    /* tokens drawn (an EOS included) */
    double t_last;
} choice;

struct call {
    struct server *S;
    sv_request req;
    bool chat;
    int32_t **ids; /* per prompt */
    size_t *n_ids;
    long prompt_tokens;
    int n_choices;
    choice *ch;
    long max_tokens;
    uint64_t seed;
    bool cancel;     /* the client went away, or the drain's time ran out */
    bool failed;     /* a device error ended it */
    int admitted;    /* choices given a slot */
    int released;    /* choices whose slot was given back (or never taken) */
    int refs;        /* the connection's, and the scheduler's until all are released */
    double t_start;
    bool first_seen;
    char id[48];
    long created;
    call *next;      /* the queue */
    /* streaming */
    struct MHD_Connection *conn;
    char *out;       /* bytes ready to send */
    size_t out_len, out_off;
    double last_sent; /* when the stream last sent something */
    bool sent_role, sent_end;
};

typedef struct server {
    const sv_config *c;
    sv_loader load;
    void *load_ctx;
    st_infer *in;
    st_tokenizer *tk;
    pthread_mutex_t tk_mu; /* encoding is not thread-safe */
    sv_chat_template chat;
    bool has_chat;
    char chat_why[320];
    char model_name[256];
    int V, sample_V, eos, ctx, slots;
    struct MHD_Daemon *d;
    pthread_mutex_t mu;
    pthread_cond_t sched_cv; /* the scheduler waits for calls */
    pthread_cond_t out_cv;   /* connections wait for text */
    call *q_head, *q_tail;
    int q_len;
    choice **slot; /* per sequence id */
    int live;      /* slots holding a choice not done */
    int cancels;   /* cancelled calls */
    bool over[ST_PLAN_MAX_STAGES]; /* groups of this run that ended */
    int in_flight; /* calls a connection still answers */
    atomic_bool ready, draining, failed, stop_sched;
    char fail_msg[512];
    long n_calls;
    /* metrics (under mu) */
    long requests[EP_N][N_CODES];
    long prompt_tokens, generated_tokens, cancelled;
    histogram ttft, tpot;
} server;

static void call_unref(server *S, call *c) /* under mu */
{
    if (--c->refs > 0)
        return;
    for (size_t i = 0; i < c->req.n_prompts || (c->chat && i < 1); i++)
        free(c->ids ? c->ids[i] : NULL);
    free(c->ids);
    free(c->n_ids);
    for (int i = 0; i < c->n_choices; i++)
        free(c->ch[i].text);
    free(c->ch);
    free(c->out);
    sv_request_free(&c->req);
    free(c);
    (void)S;
}

static bool all_done(const call *c)
{
    for (int i = 0; i < c->n_choices; i++)
        if (!c->ch[i].done)
            return false;
    return true;
}

static void count_request(server *S, int ep, int code) /* under mu */
{
    for (size_t i = 0; i < N_CODES; i++)
        if (codes[i] == code)
            S->requests[ep][i]++;
}

/* ---- text ---------------------------------------------------------------------------- */

/* The text of ids (bytes without a tokenizer: ids past 255 leave none). */
static st_status decode(server *S, const int32_t *ids, size_t n, char **text, size_t *len)
{
    if (S->tk)
        return st_tokenizer_decode(S->tk, ids, n, true, text, len);
    char *t = malloc(n + 1);
    if (!t)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 256)
            t[o++] = (char)ids[i];
    t[o] = '\0';
    *text = t;
    *len = o;
    return ST_OK;
}

/* The generated part's text as the whole text has it: decoded with a few
 * tokens of the prompt before it, whose own text is then taken off (a
 * SentencePiece tokenizer drops the space of a text's first token). */
static st_status generated_text(server *S, const st_infer_info *info, char **text, size_t *len)
{
    long w = info->n_prompt < 4 ? info->n_prompt : 4, start = info->n_prompt - w;
    char *pre = NULL, *all = NULL;
    size_t pl = 0, al = 0;
    st_status s = decode(S, info->tokens + start, (size_t)w, &pre, &pl);
    if (s == ST_OK)
        s = decode(S, info->tokens + start, (size_t)(info->n_tokens - start), &all, &al);
    if (s == ST_OK && al >= pl && memcmp(all, pre, pl) == 0) {
        memmove(all, all + pl, al - pl + 1);
        *text = all;
        *len = al - pl;
        all = NULL;
    } else if (s == ST_OK) { /* the prompt's text changed: the generated part alone */
        s = decode(S, info->tokens + info->n_prompt, (size_t)(info->n_tokens - info->n_prompt),
                   text, len);
    }
    free(pre);
    free(all);
    return s;
}

/* Where the first stop string starts in text, or -1. */
static long find_stop(const call *c, const char *text, size_t len)
{
    long at = -1;
    for (int k = 0; k < c->req.n_stop; k++) {
        size_t sl = strlen(c->req.stop[k]);
        for (size_t i = 0; i + sl <= len && (at < 0 || (long)i < at); i++)
            if (memcmp(text + i, c->req.stop[k], sl) == 0) {
                at = (long)i;
                break;
            }
    }
    return at;
}

/* How much of a choice's text may be sent now: not a character cut off,
 * nor an end that may be the start of a stop string. */
static size_t sendable(const choice *ch)
{
    if (ch->done)
        return ch->len;
    size_t n = ch->len;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        int k = st_utf8_at((const unsigned char *)ch->text + n - back, back);
        if (k == 0) {
            n -= back;
            break;
        }
        if (k != 0 && (((unsigned char)ch->text[n - back]) & 0xC0) != 0x80)
            break;
    }
    size_t hold = 0;
    for (int k = 0; k < ch->call->req.n_stop; k++) {
        const char *st = ch->call->req.stop[k];
        size_t sl = strlen(st);
        for (size_t m = sl - 1; m > hold; m--)
            if (m <= n && memcmp(ch->text + n - m, st, m) == 0) {
                hold = m;
                break;
            }
    }
    return n - hold;
}

/* ---- the scheduler -------------------------------------------------------------------- */

static void finish(server *S, choice *ch, st_infer_finish why) /* under mu */
{
    if (ch->done)
        return;
    ch->done = true;
    ch->finish = why;
    if (ch->id >= 0)
        S->live--;
    if (why == ST_FINISH_ERROR)
        ch->call->failed = true;
}

/* After a token of sequence id (a pipeline thread): its text, stop strings,
 * the metrics, the waiters woken. */
static void on_token(void *ctx, int id)
{
    server *S = ctx;
    double now = st_now_s();
    pthread_mutex_lock(&S->mu);
    choice *ch = S->slot[id];
    st_infer_info info;
    if (ch && !ch->done && st_infer_get(S->in, id, &info) == ST_OK) {
        call *c = ch->call;
        S->generated_tokens += info.n_generated - ch->n_gen;
        if (ch->n_gen == 0 && !c->first_seen) {
            c->first_seen = true;
            observe(&S->ttft, ttft_le, N_TTFT, now - c->t_start);
        } else if (ch->n_gen > 0) {
            observe(&S->tpot, tpot_le, N_TPOT, now - ch->t_last);
        }
        ch->t_last = now;
        ch->n_gen = info.n_generated;
        char *text = NULL;
        size_t len = 0;
        if (generated_text(S, &info, &text, &len) == ST_OK) {
            free(ch->text);
            ch->text = text;
            ch->len = len;
        }
        long at = find_stop(c, ch->text, ch->len);
        if (at >= 0) {
            ch->len = (size_t)at;
            st_infer_end(S->in, id, ST_FINISH_STOP);
            info.finish = ST_FINISH_STOP;
        } else if (c->cancel && info.finish == ST_FINISH_NONE) {
            st_infer_end(S->in, id, ST_FINISH_CANCEL);
            info.finish = ST_FINISH_CANCEL;
        }
        if (info.finish != ST_FINISH_NONE)
            finish(S, ch, info.finish);
        pthread_cond_broadcast(&S->out_cv);
    }
    pthread_mutex_unlock(&S->mu);
}

/* Group g of G between its passes (under mu): its cancelled sequences
 * ended, its finished ones released. */
static void settle(server *S, int g, int G)
{
    for (int id = g; id < S->slots; id += G) {
        choice *ch = S->slot[id];
        if (!ch)
            continue;
        call *c = ch->call;
        st_infer_info info;
        if (st_infer_get(S->in, id, &info) != ST_OK)
            continue;
        if (c->cancel && info.finish == ST_FINISH_NONE) {
            st_infer_end(S->in, id, ST_FINISH_CANCEL);
            info.finish = ST_FINISH_CANCEL;
        }
        if (info.finish != ST_FINISH_NONE) {
            finish(S, ch, info.finish);
            st_infer_release(S->in, id);
            S->slot[id] = NULL;
            ch->id = -1;
            if (++c->released == c->n_choices)
                call_unref(S, c);
        }
    }
}

/* Queued calls admitted, in order, into the free slots of group g of G
 * (under mu). */
static void admit(server *S, int g, int G)
{
    while (S->q_head) {
        call *c = S->q_head;
        if (c->cancel) { /* gone before it started */
            for (int i = c->admitted; i < c->n_choices; i++) {
                finish(S, &c->ch[i], ST_FINISH_CANCEL);
                c->released++;
            }
            c->admitted = c->n_choices;
        }
        while (c->admitted < c->n_choices) {
            choice *ch = &c->ch[c->admitted];
            st_infer_request r = {
                .prompt = c->ids[ch->prompt], .n_prompt = c->n_ids[ch->prompt],
                .max_tokens = c->max_tokens,
                .sampling = {.temperature = c->req.temperature, .top_k = (int)c->req.top_k,
                             .top_p = c->req.top_p, .min_p = c->req.min_p,
                             .repeat_penalty = c->req.repeat_penalty, .repeat_last_n = 64},
                .seed = c->seed + (uint64_t)ch->index * 0x9e3779b97f4a7c15ull,
                .eos = c->req.ignore_eos ? -1 : S->eos, .vocab_limit = S->sample_V};
            int id = -1;
            st_status s = st_infer_add_group(S->in, &r, g, G, &id);
            if (s == ST_ERR_BUSY)
                return;
            c->admitted++;
            if (s != ST_OK) {
                fprintf(stderr, "strata serve: %s: %s\n", c->id, st_last_error());
                finish(S, ch, ST_FINISH_ERROR);
                if (++c->released == c->n_choices)
                    call_unref(S, c);
                continue;
            }
            ch->id = id;
            S->slot[id] = ch;
            S->live++;
            st_infer_info info;
            if (st_infer_get(S->in, id, &info) == ST_OK && info.finish != ST_FINISH_NONE)
                finish(S, ch, info.finish); /* max_tokens 0 */
        }
        S->q_head = c->next;
        if (!S->q_head)
            S->q_tail = NULL;
        S->q_len--;
        if (c->released == c->n_choices && c->admitted == c->n_choices && c->cancel)
            call_unref(S, c);
    }
}

/* Before each pass of group g of G (a pipeline thread, no pass of g in
 * flight): requests leave and join without stopping the run. The run
 * stops only when a queued call could go into a group that has ended
 * (it had nothing to do), or the server stops. */
static bool between(void *ctx, int g, int G)
{
    server *S = ctx;
    pthread_mutex_lock(&S->mu);
    settle(S, g, G);
    admit(S, g, G);
    bool any = false;
    for (int id = g; id < S->slots && !any; id += G)
        any = S->slot[id] && !S->slot[id]->done;
    if (g < ST_PLAN_MAX_STAGES)
        S->over[g] = !any; /* it will end: its slots take no one until the next run */
    bool ended = false;
    for (int k = 0; k < G && k < ST_PLAN_MAX_STAGES; k++)
        ended |= S->over[k];
    bool yes = !(S->q_head && ended) && !atomic_load(&S->stop_sched);
    pthread_cond_broadcast(&S->out_cv);
    pthread_mutex_unlock(&S->mu);
    return yes;
}

/* Between runs: every group settled and filled (under mu). */
static void schedule(server *S)
{
    settle(S, 0, 1);
    admit(S, 0, 1);
    memset(S->over, 0, sizeof S->over);
}

static void *scheduler(void *arg)
{
    server *S = arg;
    pthread_mutex_lock(&S->mu);
    for (;;) {
        schedule(S);
        pthread_cond_broadcast(&S->out_cv);
        if (atomic_load(&S->stop_sched))
            break;
        if (st_infer_active(S->in) == 0) {
            pthread_cond_wait(&S->sched_cv, &S->mu);
            continue;
        }
        pthread_mutex_unlock(&S->mu);
        st_status s = st_infer_run_while(S->in, on_token, between, S);
        pthread_mutex_lock(&S->mu);
        if (s != ST_OK) {
            /* The pipeline is broken: every sequence in it and every queued
             * call fails, and the server ends (the main thread drains). */
            snprintf(S->fail_msg, sizeof S->fail_msg, "%s: %s", st_status_text(s),
                     st_last_error());
            fprintf(stderr, "strata serve: error: a device failed: %s; the requests in it fail "
                            "with 500 and the server stops\n", S->fail_msg);
            for (int id = 0; id < S->slots; id++)
                if (S->slot[id])
                    finish(S, S->slot[id], ST_FINISH_ERROR);
            for (call *c = S->q_head; c; c = c->next)
                for (int i = 0; i < c->n_choices; i++)
                    finish(S, &c->ch[i], ST_FINISH_ERROR);
            atomic_store(&S->failed, true);
            pthread_cond_broadcast(&S->out_cv);
            break;
        }
    }
    pthread_mutex_unlock(&S->mu);
    return NULL;
}

/* ---- HTTP ---------------------------------------------------------------------------- */

typedef struct conn_state {
    char *body;
    size_t len, cap;
    bool too_big;
    int ep;
} conn_state;

static enum MHD_Result reply(struct MHD_Connection *conn, int code, const char *type,
                             const char *body, size_t len, bool copy)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, (void *)body, copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_MUST_FREE);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (code == 503 || code == 429)
        MHD_add_response_header(r, "Retry-After", "1");
    if (code == 401)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)code, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result reply_json(server *S, struct MHD_Connection *conn, int ep, int code,
                                  json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    pthread_mutex_lock(&S->mu);
    count_request(S, ep, text ? code : 500);
    pthread_mutex_unlock(&S->mu);
    if (!text) {
        static const char oom[] = "{\"error\":{\"message\":\"out of host memory\","
                                  "\"type\":\"server_error\",\"param\":null,\"code\":null}}";
        return reply(conn, 500, "application/json", oom, sizeof oom - 1, true);
    }
    return reply(conn, code, "application/json", text, strlen(text), false);
}

static enum MHD_Result reply_error(server *S, struct MHD_Connection *conn, int ep,
                                   const sv_error *e)
{
    char *text = sv_error_json(e);
    pthread_mutex_lock(&S->mu);
    count_request(S, ep, e->http);
    pthread_mutex_unlock(&S->mu);
    if (!text)
        return MHD_NO;
    return reply(conn, e->http, "application/json", text, strlen(text), false);
}

static enum MHD_Result fail(server *S, struct MHD_Connection *conn, int ep, int http,
                            const char *param, const char *code, const char *msg)
{
    sv_error e;
    sv_error_set(&e, http, param, code, "%s", msg);
    return reply_error(S, conn, ep, &e);
}

/* Waits on out_cv (under mu) until woken, or 100 ms: long enough to cost
 * nothing, short enough to notice a client gone. */
static void wait_a_while(server *S)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100000000;
    if (ts.tv_nsec >= 1000000000)
        ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&S->out_cv, &S->mu, &ts);
}

/* The client closed its end (or reset it). */
static bool client_gone(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR))
        return true;
    char b;
    return recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* Bearer token compared in time that does not depend on where it differs. */
static bool authorized(server *S, struct MHD_Connection *conn)
{
    if (!S->c->api_key)
        return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7) != 0)
        return false;
    const char *got = h + 7, *want = S->c->api_key;
    size_t gl = strlen(got), wl = strlen(want);
    unsigned char d = (unsigned char)(gl != wl);
    for (size_t i = 0; i < wl; i++)
        d |= (unsigned char)(want[i] ^ (i < gl ? got[i] : 0));
    return d == 0;
}

static void put_usage(json_t *o, const call *c)
{
    long gen = 0;
    for (int i = 0; i < c->n_choices; i++)
        gen += c->ch[i].n_gen;
    json_object_set_new(o, "usage", json_pack("{s:I,s:I,s:I}", "prompt_tokens",
                                              (json_int_t)c->prompt_tokens, "completion_tokens",
                                              (json_int_t)gen, "total_tokens",
                                              (json_int_t)(c->prompt_tokens + gen)));
}

static const char *finish_reason(const choice *ch)
{
    return ch->finish == ST_FINISH_LENGTH ? "length"
           : ch->finish == ST_FINISH_EOS || ch->finish == ST_FINISH_STOP ? "stop"
                                                                          : "error";
}

/* A text as a JSON string, valid UTF-8 (each invalid part U+FFFD). */
static json_t *text_json(const char *s, size_t n)
{
    char *clean = malloc(3 * n + 1);
    if (!clean)
        return NULL;
    size_t len = 0;
    st_utf8_clean(s, n, true, clean, &len);
    json_t *j = json_stringn(clean, len);
    free(clean);
    return j;
}

static json_t *response_body(server *S, call *c) /* under mu, all done */
{
    json_t *choices = json_array();
    for (int i = 0; i < c->n_choices; i++) {
        choice *ch = &c->ch[i];
        json_t *t = text_json(ch->text ? ch->text : "", ch->len);
        json_t *one = c->chat ? json_pack("{s:i,s:{s:s,s:o},s:n,s:s}", "index", ch->index,
                                          "message", "role", "assistant", "content", t,
                                          "logprobs", "finish_reason", finish_reason(ch))
                              : json_pack("{s:i,s:o,s:n,s:s}", "index", ch->index, "text", t,
                                          "logprobs", "finish_reason", finish_reason(ch));
        json_array_append_new(choices, one);
    }
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:o}", "id", c->id, "object",
                          c->chat ? "chat.completion" : "text_completion", "created",
                          (json_int_t)c->created, "model", S->model_name, "choices", choices);
    if (o)
        put_usage(o, c);
    return o;
}

/* The connection's part of a call is over. */
static void call_leave(server *S, call *c, bool cancel) /* under mu */
{
    if (cancel && !all_done(c)) {
        c->cancel = true;
        S->cancels++;
        S->cancelled++;
        pthread_cond_signal(&S->sched_cv);
    }
    S->in_flight--;
    call_unref(S, c);
    pthread_cond_broadcast(&S->out_cv);
}

/* ---- streaming ----------------------------------------------------------------------- */

static bool add_event(call *c, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text)
        return false;
    size_t n = strlen(text);
    char *out = realloc(c->out, c->out_len + n + 9);
    if (!out) {
        free(text);
        return false;
    }
    c->out = out;
    memcpy(c->out + c->out_len, "data: ", 6);
    memcpy(c->out + c->out_len + 6, text, n);
    memcpy(c->out + c->out_len + 6 + n, "\n\n", 2);
    c->out_len += n + 8;
    free(text);
    return true;
}

static json_t *chunk(server *S, call *c, json_t *choices)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:o}", "id", c->id, "object",
                     c->chat ? "chat.completion.chunk" : "text_completion", "created",
                     (json_int_t)c->created, "model", S->model_name, "choices", choices);
}

/* What the stream has to say now (under mu): the role first (chat), new
 * text, each choice's finish, then usage and [DONE]. */
static void stream_events(server *S, call *c)
{
    if (c->chat && !c->sent_role) {
        json_t *a = json_array();
        for (int i = 0; i < c->n_choices; i++)
            json_array_append_new(a, json_pack("{s:i,s:{s:s,s:s},s:n,s:n}", "index", i, "delta",
                                               "role", "assistant", "content", "", "logprobs",
                                               "finish_reason"));
        add_event(c, chunk(S, c, a));
        c->sent_role = true;
    }
    for (int i = 0; i < c->n_choices; i++) {
        choice *ch = &c->ch[i];
        size_t upto = sendable(ch);
        bool ending = ch->done && ch->sent != (size_t)-1;
        if (upto > ch->sent || ending) {
            char *clean = malloc(3 * (upto - ch->sent) + 1);
            size_t len = 0, took = 0;
            if (clean)
                took = st_utf8_clean(ch->text + ch->sent, upto - ch->sent, ch->done, clean, &len);
            if (len > 0 || ending) {
                json_t *t = json_stringn(clean ? clean : "", len);
                json_t *fr = ending ? json_string(finish_reason(ch)) : json_null();
                json_t *one = c->chat ? json_pack("{s:i,s:o,s:n,s:o}", "index", ch->index,
                                                  "delta", len > 0 ? json_pack("{s:o}", "content", t)
                                                                   : (json_decref(t), json_object()),
                                                  "logprobs", "finish_reason", fr)
                                      : json_pack("{s:i,s:o,s:n,s:o}", "index", ch->index, "text",
                                                  t, "logprobs", "finish_reason", fr);
                add_event(c, chunk(S, c, json_pack("[o]", one)));
            }
            free(clean);
            ch->sent += took;
            if (ending)
                ch->sent = (size_t)-1; /* its end said */
        }
    }
    if (!c->sent_end && all_done(c)) {
        if (c->failed) {
            sv_error e;
            sv_error_set(&e, 500, NULL, NULL, "a device failed while generating: %s",
                         S->fail_msg);
            char *err = sv_error_json(&e);
            if (err) {
                add_event(c, json_loads(err, 0, NULL));
                free(err);
            }
        } else if (c->req.include_usage) {
            json_t *u = chunk(S, c, json_array());
            if (u)
                put_usage(u, c);
            add_event(c, u);
        }
        static const char done[] = "data: [DONE]\n\n";
        char *out = realloc(c->out, c->out_len + sizeof done);
        if (out) {
            c->out = out;
            memcpy(c->out + c->out_len, done, sizeof done - 1);
            c->out_len += sizeof done - 1;
        }
        c->sent_end = true;
    }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    call *c = cls;
    server *S = c->S;
    pthread_mutex_lock(&S->mu);
    for (;;) {
        if (c->out_off < c->out_len) {
            size_t n = c->out_len - c->out_off < max ? c->out_len - c->out_off : max;
            memcpy(buf, c->out + c->out_off, n);
            c->out_off += n;
            if (c->out_off == c->out_len)
                c->out_off = c->out_len = 0;
            c->last_sent = st_now_s();
            pthread_mutex_unlock(&S->mu);
            return (ssize_t)n;
        }
        if (c->sent_end) {
            pthread_mutex_unlock(&S->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        stream_events(S, c);
        if (c->out_len > 0)
            continue;
        wait_a_while(S);
        if (c->out_len == 0 && client_gone(c->conn)) {
            pthread_mutex_unlock(&S->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        /* Nothing for a while (a long prompt read, a queue): a comment line,
         * which clients skip, so that the idle timeout (counted by
         * libmicrohttpd between sends) does not close the stream. */
        double keep = S->c->timeout_s / 3 < 2 ? S->c->timeout_s / 3 : 2;
        if (c->out_len == 0 && st_now_s() - c->last_sent > keep && max >= 3) {
            memcpy(buf, ":\n\n", 3);
            c->last_sent = st_now_s();
            pthread_mutex_unlock(&S->mu);
            return 3;
        }
    }
}

static void stream_free(void *cls)
{
    call *c = cls;
    server *S = c->S;
    pthread_mutex_lock(&S->mu);
    call_leave(S, c, !c->sent_end);
    pthread_mutex_unlock(&S->mu);
}

/* ---- /v1/completions and /v1/chat/completions ------------------------------------------ */

static uint64_t fresh_seed(void)
{
    static atomic_ullong counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                 (atomic_fetch_add(&counter, 1) * 0x9e3779b97f4a7c15ull);
    return st_sample_next(&x);
}

/* A prompt's ids: its text encoded (with the tokenizer's BOS for
 * completions; a chat's rendered text writes its own), or ids as given. */
static bool prompt_ids(server *S, const char *text, size_t len, bool with_template,
                       int32_t **ids, size_t *n, sv_error *e)
{
    size_t cap = 0;
    *ids = NULL;
    *n = 0;
    if (!S->tk) {
        if (!(*ids = malloc((len + 1) * sizeof **ids))) {
            sv_error_set(e, 500, NULL, NULL, "out of host memory");
            return false;
        }
        for (size_t j = 0; j < len; j++)
            (*ids)[j] = (unsigned char)text[j];
        *n = len;
        return true;
    }
    pthread_mutex_lock(&S->tk_mu);
    st_status s = st_tokenizer_encode(S->tk, text, len, with_template, ids, n, &cap);
    pthread_mutex_unlock(&S->tk_mu);
    if (s != ST_OK) {
        sv_error_set(e, 422, "prompt", NULL, "the prompt cannot be tokenized: %s",
                     st_last_error());
        return false;
    }
    return true;
}

/* Checks a parsed request against the model and the limits, and makes its
 * call: prompts tokenized, one choice per prompt and n. */
static call *make_call(server *S, sv_request *r, sv_error *e)
{
    const sv_config *cf = S->c;
    if (r->model && strcmp(r->model, S->model_name) != 0) {
        sv_error_set(e, 404, "model", "model_not_found",
                     "the model '%s' does not exist; this server has '%s' (GET /v1/models)",
                     r->model, S->model_name);
        return NULL;
    }
    size_t n_prompts = r->chat ? 1 : r->n_prompts;
    long n_choices = (long)n_prompts * r->n;
    if (n_choices > S->slots) {
        sv_error_set(e, 422, "n", NULL,
                     "the request asks for %ld texts (prompts x n); this server generates at "
                     "most %d at once (--parallel)", n_choices, S->slots);
        return NULL;
    }
    if (r->chat && !S->has_chat) {
        sv_error_set(e, 400, "messages", "chat_template_unsupported",
                     "this model's chat template is not understood, so /v1/chat/completions "
                     "is off (/v1/completions works): %s", S->chat_why);
        return NULL;
    }
    call *c = calloc(1, sizeof *c);
    if (c)
        c->ids = calloc(n_prompts, sizeof *c->ids), c->n_ids = calloc(n_prompts, sizeof *c->n_ids),
        c->ch = calloc((size_t)n_choices, sizeof *c->ch);
    if (!c || !c->ids || !c->n_ids || !c->ch) {
        if (c) {
            free(c->ids);
            free(c->n_ids);
            free(c->ch);
        }
        free(c);
        sv_error_set(e, 500, NULL, NULL, "out of host memory");
        return NULL;
    }
    c->S = S;
    c->req = *r;
    *r = (sv_request){0};
    c->chat = c->req.chat;
    c->refs = 1;
    c->n_choices = (int)n_choices;
    bool ok = true;
    for (size_t p = 0; ok && p < n_prompts; p++) {
        if (c->chat) {
            char *text = NULL;
            size_t len = 0;
            if (sv_chat_render(&S->chat, c->req.messages, c->req.n_messages, &text, &len) !=
                ST_OK) {
                sv_error_set(e, 422, "messages", NULL, "%s", st_last_error());
                ok = false;
            } else {
                ok = prompt_ids(S, text, len, false, &c->ids[p], &c->n_ids[p], e);
            }
            free(text);
        } else if (c->req.prompts[p].text) {
            ok = prompt_ids(S, c->req.prompts[p].text, strlen(c->req.prompts[p].text), true,
                            &c->ids[p], &c->n_ids[p], e);
        } else {
            c->ids[p] = c->req.prompts[p].ids;
            c->n_ids[p] = c->req.prompts[p].n_ids;
            c->req.prompts[p].ids = NULL;
            for (size_t j = 0; ok && j < c->n_ids[p]; j++)
                if (c->ids[p][j] >= S->V) {
                    sv_error_set(e, 422, "prompt", NULL,
                                 "the prompt has the token id %d; the model's vocabulary has %d",
                                 c->ids[p][j], S->V);
                    ok = false;
                }
        }
        if (!ok)
            break;
        if (c->n_ids[p] == 0) {
            sv_error_set(e, 422, c->chat ? "messages" : "prompt", NULL, "the prompt has no tokens");
            ok = false;
        } else if (c->n_ids[p] >= (size_t)S->ctx) {
            sv_error_set(e, 400, c->chat ? "messages" : "prompt", "context_length_exceeded",
                         "the prompt has %zu tokens; this model's context holds %d, and at "
                         "least one must be left for the answer", c->n_ids[p], S->ctx);
            ok = false;
        }
        c->prompt_tokens += (long)c->n_ids[p] * c->req.n;
    }
    long limit = cf->max_tokens > 0 ? cf->max_tokens : S->ctx;
    if (ok && c->req.max_tokens > limit) {
        sv_error_set(e, 422, c->chat ? "max_tokens" : "max_tokens", NULL,
                     "'max_tokens' is %ld; this server allows at most %ld (--max-tokens)",
                     c->req.max_tokens, limit);
        ok = false;
    }
    if (!ok) {
        pthread_mutex_lock(&S->mu);
        call_unref(S, c);
        pthread_mutex_unlock(&S->mu);
        return NULL;
    }
    /* not given: 16 for a completion (OpenAI's), the context's end for a chat */
    c->max_tokens = c->req.max_tokens >= 0 ? c->req.max_tokens : c->chat ? limit : 16;
    c->seed = c->req.has_seed ? c->req.seed : fresh_seed();
    c->created = (long)time(NULL);
    for (int i = 0; i < c->n_choices; i++)
        c->ch[i] = (choice){.call = c, .index = i, .prompt = i / (int)c->req.n, .id = -1};
    return c;
}

static enum MHD_Result generate(server *S, struct MHD_Connection *conn, conn_state *cs)
{
    bool chat = cs->ep == EP_CHAT;
    sv_request r;
    sv_error e;
    if (!sv_request_parse(cs->body ? cs->body : "", cs->len, chat, &r, &e))
        return reply_error(S, conn, cs->ep, &e);
    call *c = make_call(S, &r, &e);
    sv_request_free(&r);
    if (!c)
        return reply_error(S, conn, cs->ep, &e);
    pthread_mutex_lock(&S->mu);
    if (atomic_load(&S->draining) || atomic_load(&S->failed) ||
        S->q_len >= S->c->queue) {
        bool busy = !atomic_load(&S->draining) && !atomic_load(&S->failed);
        call_unref(S, c);
        pthread_mutex_unlock(&S->mu);
        return fail(S, conn, cs->ep, 503, NULL, busy ? "server_busy" : "shutting_down",
                    busy ? "the server is at its limit of queued requests (--queue); try again "
                           "shortly"
                         : "the server is shutting down");
    }
    snprintf(c->id, sizeof c->id, "%s-%ld", chat ? "chatcmpl" : "cmpl", ++S->n_calls);
    c->t_start = c->last_sent = st_now_s();
    c->refs = 2; /* the connection's and the scheduler's */
    c->conn = conn;
    if (S->q_tail)
        S->q_tail->next = c;
    else
        S->q_head = c;
    S->q_tail = c;
    S->q_len++;
    S->in_flight++;
    S->prompt_tokens += c->prompt_tokens;
    pthread_cond_signal(&S->sched_cv);
    if (c->req.stream) {
        count_request(S, cs->ep, 200);
        pthread_mutex_unlock(&S->mu);
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, c,
                                              stream_free);
        if (!resp) {
            pthread_mutex_lock(&S->mu);
            call_leave(S, c, true);
            pthread_mutex_unlock(&S->mu);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        enum MHD_Result ok = MHD_queue_response(conn, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ok;
    }
    /* the whole answer: wait for it, watching the client */
    while (!all_done(c)) {
        wait_a_while(S);
        if (!all_done(c) && client_gone(conn)) {
            call_leave(S, c, true);
            pthread_mutex_unlock(&S->mu);
            return MHD_NO; /* nobody to answer */
        }
    }
    enum MHD_Result ok;
    if (c->failed) {
        char msg[640];
        snprintf(msg, sizeof msg, "a device failed while generating: %s", S->fail_msg);
        call_leave(S, c, false);
        pthread_mutex_unlock(&S->mu);
        ok = fail(S, conn, cs->ep, 500, NULL, NULL, msg);
    } else {
        json_t *body = response_body(S, c);
        call_leave(S, c, false);
        pthread_mutex_unlock(&S->mu);
        ok = reply_json(S, conn, cs->ep, 200, body);
    }
    return ok;
}

/* ---- the other endpoints ---------------------------------------------------------------- */

static void metric(char **out, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void metric(char **out, size_t *len, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (!*out || n <= 0)
        return;
    char *p = realloc(*out, *len + (size_t)n + 1);
    if (!p) {
        free(*out);
        *out = NULL;
        return;
    }
    memcpy(p + *len, line, (size_t)n + 1);
    *out = p;
    *len += (size_t)n;
}

static void histogram_text(char **out, size_t *len, const char *name, const char *help,
                           const histogram *h, const double *le, size_t n)
{
    metric(out, len, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (size_t i = 0; i < n; i++)
        metric(out, len, "%s_bucket{le=\"%g\"} %ld\n", name, le[i], h->bucket[i]);
    metric(out, len, "%s_bucket{le=\"+Inf\"} %ld\n%s_sum %.6f\n%s_count %ld\n", name, h->count,
           name, h->sum, name, h->count);
}

static enum MHD_Result metrics(server *S, struct MHD_Connection *conn)
{
    size_t len = 0;
    char *out = calloc(1, 1);
    pthread_mutex_lock(&S->mu);
    count_request(S, EP_METRICS, 200);
    metric(&out, &len, "# HELP strata_requests_total HTTP requests answered, by endpoint and "
                       "status code.\n# TYPE strata_requests_total counter\n");
    for (int ep = 0; ep < EP_N; ep++)
        for (size_t k = 0; k < N_CODES; k++)
            if (S->requests[ep][k])
                metric(&out, &len, "strata_requests_total{endpoint=\"%s\",code=\"%d\"} %ld\n",
                       ep_names[ep], codes[k], S->requests[ep][k]);
    metric(&out, &len,
           "# HELP strata_prompt_tokens_total Prompt tokens of the requests taken.\n"
           "# TYPE strata_prompt_tokens_total counter\nstrata_prompt_tokens_total %ld\n"
           "# HELP strata_generated_tokens_total Tokens generated.\n"
           "# TYPE strata_generated_tokens_total counter\nstrata_generated_tokens_total %ld\n"
           "# HELP strata_requests_cancelled_total Requests whose client went away before "
           "the end.\n# TYPE strata_requests_cancelled_total counter\n"
           "strata_requests_cancelled_total %ld\n",
           S->prompt_tokens, S->generated_tokens, S->cancelled);
    metric(&out, &len,
           "# HELP strata_queue_length Requests waiting for a KV cache slot.\n"
           "# TYPE strata_queue_length gauge\nstrata_queue_length %d\n"
           "# HELP strata_requests_in_flight Requests being answered.\n"
           "# TYPE strata_requests_in_flight gauge\nstrata_requests_in_flight %d\n"
           "# HELP strata_kv_slots_used KV cache slots holding a running sequence.\n"
           "# TYPE strata_kv_slots_used gauge\nstrata_kv_slots_used %d\n"
           "# HELP strata_kv_slots KV cache slots (--parallel).\n"
           "# TYPE strata_kv_slots gauge\nstrata_kv_slots %d\n",
           S->q_len, S->in_flight, S->live, S->slots);
    histogram_text(&out, &len, "strata_time_to_first_token_seconds",
                   "From a request's arrival to its first generated token.", &S->ttft, ttft_le,
                   N_TTFT);
    histogram_text(&out, &len, "strata_time_per_output_token_seconds",
                   "Between a sequence's generated tokens.", &S->tpot, tpot_le, N_TPOT);
    pthread_mutex_unlock(&S->mu);
    if (!out)
        return MHD_NO;
    return reply(conn, 200, "text/plain; version=0.0.4", out, len, false);
}

static enum MHD_Result route(server *S, struct MHD_Connection *conn, const char *url,
                             const char *method, conn_state *cs)
{
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool post = strcmp(method, "POST") == 0;
    int ep = cs->ep;
    if (ep == EP_OTHER)
        return fail(S, conn, ep, 404, NULL, "not_found",
                    "no such endpoint: this server has POST /v1/completions, POST "
                    "/v1/chat/completions, GET /v1/models, /health, /metrics and /");
    bool want_post = ep == EP_COMPLETIONS || ep == EP_CHAT;
    if (want_post ? !post : !get) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s takes %s, not %s", url, want_post ? "POST" : "GET", method);
        return fail(S, conn, ep, 405, NULL, "method_not_allowed", msg);
    }
    if (ep == EP_HEALTH) {
        const char *st = atomic_load(&S->failed)     ? "failed"
                         : atomic_load(&S->draining) ? "draining"
                         : atomic_load(&S->ready)    ? "ok"
                                                     : "loading";
        return reply_json(S, conn, ep, strcmp(st, "ok") == 0 ? 200 : 503,
                          json_pack("{s:s}", "status", st));
    }
    if (ep == EP_PAGE) {
        pthread_mutex_lock(&S->mu);
        count_request(S, ep, 200);
        pthread_mutex_unlock(&S->mu);
        return reply(conn, 200, "text/html; charset=utf-8", sv_page_html, sv_page_html_len, true);
    }
    if (!authorized(S, conn))
        return fail(S, conn, ep, 401, NULL, "invalid_api_key",
                    "this server needs an API key: send 'Authorization: Bearer KEY' "
                    "(the key given to --api-key)");
    if (ep == EP_METRICS)
        return metrics(S, conn);
    if (!atomic_load(&S->ready))
        return fail(S, conn, ep, 503, NULL, "loading", "the model is still loading");
    if (ep == EP_MODELS)
        return reply_json(S, conn, ep, 200,
                          json_pack("{s:s,s:[{s:s,s:s,s:I,s:s}]}", "object", "list", "data", "id",
                                    S->model_name, "object", "model", "created",
                                    (json_int_t)time(NULL), "owned_by", "strata"));
    if (cs->too_big) {
        char msg[160];
        snprintf(msg, sizeof msg, "the body is larger than %zu bytes (--max-body)",
                 S->c->max_body);
        return fail(S, conn, ep, 413, NULL, "request_too_large", msg);
    }
    return generate(S, conn, cs);
}

static int endpoint(const char *url)
{
    return strcmp(url, "/v1/completions") == 0        ? EP_COMPLETIONS
           : strcmp(url, "/v1/chat/completions") == 0 ? EP_CHAT
           : strcmp(url, "/v1/models") == 0           ? EP_MODELS
           : strcmp(url, "/health") == 0              ? EP_HEALTH
           : strcmp(url, "/metrics") == 0             ? EP_METRICS
           : strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0 ? EP_PAGE
                                                                     : EP_OTHER;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls)
{
    (void)version;
    server *S = cls;
    conn_state *cs = *con_cls;
    if (!cs) { /* the headers: the body follows */
        if (!(cs = calloc(1, sizeof *cs)))
            return MHD_NO;
        cs->ep = endpoint(url);
        *con_cls = cs;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > S->c->max_body)
            cs->too_big = true;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (!cs->too_big && cs->len + *upload_size > S->c->max_body)
            cs->too_big = true;
        if (!cs->too_big) {
            if (cs->len + *upload_size + 1 > cs->cap) {
                size_t cap = (cs->len + *upload_size + 1) * 2;
                cap = cap > S->c->max_body + 1 ? S->c->max_body + 1 : cap;
                char *b = realloc(cs->body, cap);
                if (!b)
                    return MHD_NO;
                cs->body = b;
                cs->cap = cap;
            }
            memcpy(cs->body + cs->len, upload, *upload_size);
            cs->len += *upload_size;
            cs->body[cs->len] = '\0';
        }
        *upload_size = 0;
        return MHD_YES;
    }
    return route(S, conn, url, method, cs);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn, (void)toe;
    conn_state *cs = *con_cls;
    if (cs) {
        free(cs->body);
        free(cs);
        *con_cls = NULL;
    }
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (getenv("STRATA_SERVE_DEBUG")) {
        fputs("strata serve: http: ", stderr);
        vfprintf(stderr, fmt, ap);
    }
}

/* ---- the listening socket and the life of the server ------------------------------------ */

static int listen_on(const char *host, int port, char *where, size_t size)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &ai);
    if (rc != 0) {
        st_error(ST_ERR_INVALID, "--host %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, err = 0;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 128) != 0) {
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        st_error(ST_ERR_INVALID, "cannot listen on %s port %d: %s%s", host, port, strerror(err),
                 err == EADDRINUSE ? " (another process has it: choose another --port, or 0 "
                                     "for a free one)"
                                   : "");
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char addr[INET6_ADDRSTRLEN] = "?";
    int got = port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof addr);
            got = ntohs(s4->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &s6->sin6_addr, addr + 1, sizeof addr - 2);
            addr[0] = '[';
            strcat(addr, "]");
            got = ntohs(s6->sin6_port);
        }
    }
    snprintf(where, size, "http://%s:%d", addr, got);
    return fd;
}

/* Passes of every size the slots make, once, before the first request:
 * a device compiles a kernel for each new work size the first time it
 * sees it (PoCL: about half a second each), which would otherwise stall
 * the first requests. Sequences of staggered lengths read prompts in
 * chunks, then decode with all the slots down to one. */
static st_status warm_up(server *S)
{
    double t0 = st_now_s();
    long len = S->ctx / 2 > 1 ? S->ctx / 2 : 1;
    len = len > 256 ? 256 : len;
    int32_t *ids = calloc((size_t)len, sizeof *ids);
    if (!ids)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_status s = ST_OK;
    for (int k = 0; s == ST_OK && k < S->slots; k++) {
        long n = 1 + (len - 1) * k / (S->slots > 1 ? S->slots - 1 : 1);
        long room = S->ctx - n;
        st_infer_request r = {.prompt = ids, .n_prompt = (size_t)n,
                              .max_tokens = k + 2 < room ? k + 2 : room, .eos = -1};
        int id;
        s = st_infer_add(S->in, &r, &id);
    }
    free(ids);
    if (s == ST_OK)
        s = st_infer_run(S->in, NULL, NULL);
    for (int id = 0; id < S->slots; id++)
        st_infer_release(S->in, id);
    if (s == ST_OK)
        fprintf(stderr, "strata serve: warmed up the kernels for every pass size in %.1f s\n",
                st_now_s() - t0);
    return s;
}

int sv_serve(const sv_config *cf, sv_loader load, void *load_ctx)
{
    server *S = calloc(1, sizeof *S);
    if (!S) {
        fprintf(stderr, "strata serve: error: out of host memory\n");
        return 1;
    }
    S->c = cf;
    S->load = load;
    S->load_ctx = load_ctx;
    pthread_mutex_init(&S->mu, NULL);
    pthread_mutex_init(&S->tk_mu, NULL);
    pthread_cond_init(&S->sched_cv, NULL);
    pthread_cond_init(&S->out_cv, NULL);
    /* The signals that end the server go to the main thread alone (every
     * thread made from here on blocks them). */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    signal(SIGPIPE, SIG_IGN);
    int code = 0;
    char where[128];
    int fd = listen_on(cf->host, cf->port, where, sizeof where);
    if (fd < 0) {
        fprintf(stderr, "strata serve: error: %s\n", st_last_error());
        free(S);
        return 2;
    }
    unsigned conns = (unsigned)(cf->parallel + cf->queue + 32);
    S->d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
            MHD_USE_ERROR_LOG,
        0, NULL, NULL, handler, S, MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_CONNECTION_LIMIT, conns, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)(cf->timeout_s > 1 ? cf->timeout_s : 1), MHD_OPTION_NOTIFY_COMPLETED,
        completed, S, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    if (!S->d) {
        fprintf(stderr, "strata serve: error: the HTTP server did not start on %s\n", where);
        close(fd);
        free(S);
        return 1;
    }
    fprintf(stderr, "strata serve: listening on %s (loading the model: /health says "
                    "\"loading\")\n", where);
    /* the model, while /health answers */
    st_status s = load(load_ctx, &S->in, &S->tk);
    if (s == ST_OK) {
        const st_model_config *mc = st_infer_config(S->in);
        S->V = mc->vocab_size;
        S->ctx = st_infer_ctx(S->in);
        S->slots = cf->parallel;
        S->eos = S->tk ? st_tokenizer_eos(S->tk) : -1;
        S->sample_V = S->tk && st_tokenizer_vocab_size(S->tk) < (size_t)S->V
                          ? (int)st_tokenizer_vocab_size(S->tk)
                          : S->V;
        if (!(S->slot = calloc((size_t)S->slots, sizeof *S->slot)))
            s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    }
    if (s == ST_OK) {
        const char *slash = strrchr(cf->model_dir, '/');
        const char *base = slash && slash[1] ? slash + 1 : cf->model_dir;
        snprintf(S->model_name, sizeof S->model_name, "%s", cf->model_name ? cf->model_name : base);
        size_t n = strlen(S->model_name);
        while (n > 1 && S->model_name[n - 1] == '/')
            S->model_name[--n] = '\0';
        const char *dir = cf->tokenizer ? cf->tokenizer : cf->model_dir;
        if (!S->tk) {
            snprintf(S->chat_why, sizeof S->chat_why, "the model has no tokenizer");
        } else if (sv_chat_load(dir, &S->chat) == ST_OK) {
            S->has_chat = true;
        } else {
            snprintf(S->chat_why, sizeof S->chat_why, "%s", st_last_error());
        }
    }
    if (s == ST_OK)
        s = warm_up(S);
    pthread_t sched;
    bool sched_started = false;
    if (s == ST_OK) {
        if (pthread_create(&sched, NULL, scheduler, S) != 0)
            s = st_error(ST_ERR_HOST_MEMORY, "cannot start the scheduler thread");
        else
            sched_started = true;
    }
    if (s != ST_OK) {
        fprintf(stderr, "strata serve: error: %s\n", st_last_error());
        code = s == ST_ERR_INVALID || s == ST_ERR_NOT_FOUND || s == ST_ERR_FORMAT ||
                       s == ST_ERR_NO_DEVICE
                   ? 2
                   : 1;
    } else {
        atomic_store(&S->ready, true);
        fprintf(stderr,
                "strata serve: ready: model '%s', %d sequences at once of up to %d tokens, "
                "%d more queued; chat: %s%s%s\n",
                S->model_name, S->slots, S->ctx, cf->queue,
                S->has_chat ? S->chat.name : "off (", S->has_chat ? "" : S->chat_why,
                S->has_chat ? " template" : ")");
        int sig = 0;
        while (!atomic_load(&S->failed)) {
            struct timespec ts = {0, 200000000};
            sig = sigtimedwait(&stop_set, NULL, &ts);
            if (sig > 0)
                break;
        }
        if (sig > 0)
            fprintf(stderr, "strata serve: %s: finishing the requests in flight (up to %.0f s), "
                            "taking no new ones\n", strsignal(sig), cf->drain_s);
        code = atomic_load(&S->failed) ? 1 : 0;
    }
    /* Drain: no new connections; the calls in flight end, or are cancelled
     * when the time is up. */
    atomic_store(&S->draining, true);
    int lfd = MHD_quiesce_daemon(S->d);
    if (lfd >= 0)
        close(lfd);
    double until = st_now_s() + cf->drain_s;
    pthread_mutex_lock(&S->mu);
    while (S->in_flight > 0 && st_now_s() < until) {
        wait_a_while(S);
    }
    int left = S->in_flight;
    if (left > 0) { /* time is up: cancelled */
        for (int id = 0; id < S->slots; id++)
            if (S->slot[id] && !S->slot[id]->call->cancel) {
                S->slot[id]->call->cancel = true;
                S->cancels++;
            }
        for (call *c = S->q_head; c; c = c->next)
            c->cancel = true;
    }
    atomic_store(&S->stop_sched, true);
    pthread_cond_signal(&S->sched_cv);
    pthread_mutex_unlock(&S->mu);
    if (sched_started)
        pthread_join(sched, NULL);
    /* what is still waiting ends now: the scheduler is gone */
    pthread_mutex_lock(&S->mu);
    for (int id = 0; id < S->slots; id++)
        if (S->slot && S->slot[id])
            finish(S, S->slot[id], ST_FINISH_CANCEL);
    for (call *c = S->q_head; c; c = c->next)
        for (int i = 0; i < c->n_choices; i++)
            finish(S, &c->ch[i], ST_FINISH_CANCEL);
    pthread_cond_broadcast(&S->out_cv);
    pthread_mutex_unlock(&S->mu);
    MHD_stop_daemon(S->d);
    if (left > 0)
        fprintf(stderr, "strata serve: %d request%s cancelled at the end of the drain\n", left,
                left == 1 ? "" : "s");
    if (sched_started)
        fprintf(stderr, "strata serve: stopped after %ld requests; %ld prompt tokens read, %ld "
                        "tokens generated\n", S->n_calls, S->prompt_tokens, S->generated_tokens);
    st_tokenizer_free(S->tk);
    st_infer_close(S->in);
    free(S->slot);
    pthread_mutex_destroy(&S->mu);
    pthread_mutex_destroy(&S->tk_mu);
    pthread_cond_destroy(&S->sched_cv);
    pthread_cond_destroy(&S->out_cv);
    free(S);
    return code;
}
