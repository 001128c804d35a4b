/* ref_ops.c - the plain-C references, written for clarity, not speed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/ref_ops.h"

void ref_layernorm_fwd(double *out, double *mean, double *rstd, const double *inp,
                       const double *w, const double *b, int N, int C, double eps)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C;
        double m = 0, var = 0;
        for (int c = 0; c < C; c++)
            m += x[c];
        m /= C;
        for (int c = 0; c < C; c++)
            var += (x[c] - m) * (x[c] - m);
        var /= C;
        double s = 1.0 / sqrt(var + eps);
        for (int c = 0; c < C; c++)
            out[(size_t)n * C + c] = (x[c] - m) * s * w[c] + b[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

void ref_layernorm_bwd(double *dinp, double *dw, double *db, const double *dout,
                       const double *inp, const double *w, const double *mean,
                       const double *rstd, int N, int C)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        double g_mean = 0, gx_mean = 0;
        for (int c = 0; c < C; c++) {
            double xhat = (x[c] - mean[n]) * rstd[n];
            g_mean += dy[c] * w[c];
            gx_mean += dy[c] * w[c] * xhat;
            dw[c] += dy[c] * xhat;
            db[c] += dy[c];
        }
        g_mean /= C;
        gx_mean /= C;
        for (int c = 0; c < C; c++) {
            double xhat = (x[c] - mean[n]) * rstd[n];
            dinp[(size_t)n * C + c] += rstd[n] * (dy[c] * w[c] - g_mean - xhat * gx_mean);
        }
    }
}

static const double gelu_k = 0.79788456080286535588; /* sqrt(2/pi) */

void ref_gelu_fwd(double *out, const double *inp, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        out[i] = 0.5 * x * (1.0 + tanh(gelu_k * (x + 0.044715 * x * x * x)));
    }
}

void ref_gelu_bwd(double *dinp, const double *inp, const double *dout, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        double t = tanh(gelu_k * (x + 0.044715 * x * x * x));
        double du = gelu_k * (1.0 + 3.0 * 0.044715 * x * x);
        dinp[i] = dout[i] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
    }
}

void ref_bias_fwd(double *out, const double *bias, int N, int C)
{
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            out[(size_t)n * C + c] += bias[c];
}

void ref_bias_bwd(double *dbias, const double *dout, int N, int C)
{
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            dbias[c] += dout[(size_t)n * C + c];
}

void ref_xent_fwd(double *probs, double *losses, const double *logits, const int *targets, int N,
                  int V)
{
    for (int n = 0; n < N; n++) {
        const double *z = logits + (size_t)n * V;
        double *p = probs + (size_t)n * V;
        double m = -INFINITY, sum = 0;
        for (int v = 0; v < V; v++)
            m = z[v] > m ? z[v] : m;
        for (int v = 0; v < V; v++)
            sum += exp(z[v] - m);
        for (int v = 0; v < V; v++)
            p[v] = exp(z[v] - m) / sum;
        int t = targets[n];
        losses[n] = t >= 0 && t < V ? -log(p[t]) : 0.0;
    }
}

void ref_xent_bwd(double *dlogits, const double *probs, const int *targets, double dloss, int N,
                  int V)
{
    for (int n = 0; n < N; n++)
        for (int v = 0; v < V; v++) {
            size_t i = (size_t)n * V + v;
            dlogits[i] = targets[n] >= 0 ? (probs[i] - (v == targets[n])) * dloss : 0.0;
        }
}

void ref_adamw_step(double *param, const double *grad, double *m, double *v, size_t n, double lr,
                    double b1, double b2, double eps, double wd, long t, double grad_scale)
{
    double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
    for (size_t i = 0; i < n; i++) {
        double g = grad[i] * grad_scale;
        m[i] = b1 * m[i] + (1 - b1) * g;
        v[i] = b2 * v[i] + (1 - b2) * g * g;
        param[i] -= lr * (m[i] / bc1 / (sqrt(v[i] / bc2) + eps) + wd * param[i]);
    }
}

void ref_encoder_fwd(double *out, const int *tokens, const double *wte, const double *wpe, int B,
                     int T, int C)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++)
                out[((size_t)b * T + t) * C + c] =
                    wte[(size_t)tokens[b * T + t] * C + c] + wpe[(size_t)t * C + c];
}

void ref_encoder_bwd(double *dwte, double *dwpe, const double *dout, const int *tokens, int B,
                     int T, int C)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                double g = dout[((size_t)b * T + t) * C + c];
                dwte[(size_t)tokens[b * T + t] * C + c] += g;
                dwpe[(size_t)t * C + c] += g;
            }
}

/* Element of q (which=0), k (1) or v (2) for sequence b, position t, head h, channel i. */
static size_t qkv_at(int which, int b, int t, int h, int i, int T, int C, int HS)
{
    return ((size_t)b * T + t) * 3 * C + (size_t)which * C + (size_t)h * HS + i;
}

void ref_attention_fwd(double *out, double *att, const double *qkv, int B, int T, int C, int NH)
{
    int HS = C / NH;
    double scale = 1.0 / sqrt((double)HS);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                double *a = att + (((size_t)b * NH + h) * T + t) * T;
                double m = -INFINITY, sum = 0;
                for (int s = 0; s < T; s++) {
                    double dot = 0;
                    for (int i = 0; i < HS; i++)
                        dot += qkv[qkv_at(0, b, t, h, i, T, C, HS)] *
                               qkv[qkv_at(1, b, s, h, i, T, C, HS)];
                    a[s] = dot * scale;
                    if (s <= t && a[s] > m)
                        m = a[s];
                }
                for (int s = 0; s < T; s++) {
                    a[s] = s <= t ? exp(a[s] - m) : 0.0;
                    sum += a[s];
                }
                for (int s = 0; s < T; s++)
                    a[s] /= sum;
                for (int i = 0; i < HS; i++) {
                    double o = 0;
                    for (int s = 0; s <= t; s++)
                        o += a[s] * qkv[qkv_at(2, b, s, h, i, T, C, HS)];
                    out[((size_t)b * T + t) * C + (size_t)h * HS + i] = o;
                }
            }
}

void ref_attention_bwd(double *dqkv, const double *dout, const double *qkv, const double *att,
                       int B, int T, int C, int NH)
{
    int HS = C / NH;
    double scale = 1.0 / sqrt((double)HS);
    memset(dqkv, 0, (size_t)B * T * 3 * C * sizeof *dqkv);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double *a = att + (((size_t)b * NH + h) * T + t) * T;
                const double *dy = dout + ((size_t)b * T + t) * C + (size_t)h * HS;
                double da[4096]; /* T is small in the tests */
                for (int s = 0; s <= t; s++) {
                    da[s] = 0;
                    for (int i = 0; i < HS; i++) {
                        da[s] += dy[i] * qkv[qkv_at(2, b, s, h, i, T, C, HS)];
                        dqkv[qkv_at(2, b, s, h, i, T, C, HS)] += a[s] * dy[i];
                    }
                }
                double dot = 0;
                for (int s = 0; s <= t; s++)
                    dot += a[s] * da[s];
                for (int s = 0; s <= t; s++) {
                    double ds = a[s] * (da[s] - dot) * scale; /* through the softmax and scale */
                    for (int i = 0; i < HS; i++) {
                        dqkv[qkv_at(0, b, t, h, i, T, C, HS)] +=
                            ds * qkv[qkv_at(1, b, s, h, i, T, C, HS)];
                        dqkv[qkv_at(1, b, s, h, i, T, C, HS)] +=
                            ds * qkv[qkv_at(0, b, t, h, i, T, C, HS)];
                    }
                }
            }
}

void ref_matmul_fwd(double *out, const double *inp, const double *w, const double *b, int N,
                    int IC, int OC)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double acc = b ? b[o] : 0.0;
            for (int i = 0; i < IC; i++)
                acc += inp[n * IC + i] * w[i * OC + o];
            out[n * OC + o] = acc;
        }
}

void ref_matmul_bwd(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                    const double *w, int N, int IC, int OC)
{
    for (int n = 0; n < N; n++)
        for (int i = 0; i < IC; i++) {
            double acc = 0.0;
            for (int o = 0; o < OC; o++)
                acc += dout[n * OC + o] * w[i * OC + o];
            dinp[n * IC + i] = acc;
        }
    for (int i = 0; i < IC; i++)
        for (int o = 0; o < OC; o++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++)
                acc += inp[n * IC + i] * dout[n * OC + o];
            dw[i * OC + o] += acc;
        }
    for (int o = 0; db && o < OC; o++)
        for (int n = 0; n < N; n++)
            db[o] += dout[n * OC + o];
}

/* ---- Llama family ---- */

void ref_linear_fwd(double *out, const double *inp, const double *w, const double *b, int N,
                    int IC, int OC)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double acc = b ? b[o] : 0.0;
            for (int i = 0; i < IC; i++)
                acc += inp[(size_t)n * IC + i] * w[(size_t)o * IC + i];
            out[(size_t)n * OC + o] = acc;
        }
}

void ref_linear_bwd(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                    const double *w, int N, int IC, int OC)
{
    for (int n = 0; n < N; n++) {
        for (int i = 0; dinp && i < IC; i++) {
            double acc = 0;
            for (int o = 0; o < OC; o++)
                acc += dout[(size_t)n * OC + o] * w[(size_t)o * IC + i];
            dinp[(size_t)n * IC + i] = acc;
        }
        for (int o = 0; o < OC; o++) {
            double d = dout[(size_t)n * OC + o];
            for (int i = 0; i < IC; i++)
                dw[(size_t)o * IC + i] += d * inp[(size_t)n * IC + i];
            if (db)
                db[o] += d;
        }
    }
}

void ref_rmsnorm_fwd(double *out, double *rstd, const double *inp, const double *w, int N, int C,
                     double eps)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C;
        double ss = 0;
        for (int c = 0; c < C; c++)
            ss += x[c] * x[c];
        double s = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++)
            out[(size_t)n * C + c] = x[c] * s * w[c];
        rstd[n] = s;
    }
}

void ref_rmsnorm_bwd(double *dinp, double *dw, const double *dout, const double *inp,
                     const double *w, const double *rstd, int N, int C)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        double s = rstd[n], gx = 0;
        for (int c = 0; c < C; c++)
            gx += dy[c] * w[c] * x[c] * s;
        gx /= C;
        for (int c = 0; c < C; c++) {
            dinp[(size_t)n * C + c] += s * (dy[c] * w[c] - x[c] * s * gx);
            dw[c] += dy[c] * x[c] * s;
        }
    }
}

/* The angle as Hugging Face computes it: a float product of the position
 * and the (float) frequency. */
static double rope_angle(int pos, double inv_freq)
{
    return (double)((float)pos * (float)inv_freq);
}

void ref_rope_fwd(double *qkv, const double *bias, const double *inv_freq, int N, int T,
                  int pos0, int NH, int KV, int HS)
{
    int half = HS / 2, W = (NH + 2 * KV) * HS;
    for (int n = 0; n < N; n++) {
        double *row = qkv + (size_t)n * W;
        for (int c = 0; bias && c < W; c++)
            row[c] += bias[c];
        for (int head = 0; head < NH + KV; head++)
            for (int i = 0; i < half; i++) {
                double a = rope_angle(pos0 + n % T, inv_freq[i]);
                double *x = row + head * HS;
                double x1 = x[i], x2 = x[i + half];
                x[i] = x1 * cos(a) - x2 * sin(a);
                x[i + half] = x2 * cos(a) + x1 * sin(a);
            }
    }
}

void ref_rope_bwd(double *dqkv, const double *inv_freq, int N, int T, int pos0, int NH, int KV,
                  int HS)
{
    int half = HS / 2, W = (NH + 2 * KV) * HS;
    for (int n = 0; n < N; n++)
        for (int head = 0; head < NH + KV; head++)
            for (int i = 0; i < half; i++) {
                double a = rope_angle(pos0 + n % T, inv_freq[i]);
                double *d = dqkv + (size_t)n * W + head * HS;
                double d1 = d[i], d2 = d[i + half];
                d[i] = d1 * cos(a) + d2 * sin(a);
                d[i + half] = d2 * cos(a) - d1 * sin(a);
            }
}

void ref_swiglu_fwd(double *h, const double *gu, int N, int F)
{
    for (int n = 0; n < N; n++)
        for (int j = 0; j < F; j++) {
            double g = gu[(size_t)n * 2 * F + j], u = gu[(size_t)n * 2 * F + F + j];
            h[(size_t)n * F + j] = g / (1.0 + exp(-g)) * u;
        }
}

void ref_swiglu_bwd(double *dgu, const double *dh, const double *gu, int N, int F)
{
    for (int n = 0; n < N; n++)
        for (int j = 0; j < F; j++) {
            double g = gu[(size_t)n * 2 * F + j], u = gu[(size_t)n * 2 * F + F + j];
            double s = 1.0 / (1.0 + exp(-g)), d = dh[(size_t)n * F + j];
            dgu[(size_t)n * 2 * F + j] = d * u * s * (1.0 + g * (1.0 - s));
            dgu[(size_t)n * 2 * F + F + j] = d * g * s;
        }
}

/* Element e of head hd's vector in row (b, t) of qkv [B, T, W]; part 0 q
 * (NH heads), 1 k, 2 v (KV heads each). */
static size_t gqa_at(int part, int b, int t, int hd, int e, int T, int NH, int KV, int HS)
{
    size_t W = (size_t)(NH + 2 * KV) * HS;
    size_t col = part == 0 ? 0 : part == 1 ? (size_t)NH * HS : (size_t)(NH + KV) * HS;
    return ((size_t)b * T + t) * W + col + (size_t)hd * HS + e;
}

void ref_gqa_attention_fwd(double *out, double *att, const double *qkv, int B, int T, int C,
                           int NH, int KV)
{
    int HS = C / NH, G = NH / KV;
    double scale = 1.0 / sqrt((double)HS);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                double *a = att + (((size_t)b * NH + h) * T + t) * T, m = -INFINITY, sum = 0;
                for (int s = 0; s < T; s++) {
                    double dot = 0;
                    for (int i = 0; i < HS; i++)
                        dot += qkv[gqa_at(0, b, t, h, i, T, NH, KV, HS)] *
                               qkv[gqa_at(1, b, s, h / G, i, T, NH, KV, HS)];
                    a[s] = dot * scale;
                    if (s <= t && a[s] > m)
                        m = a[s];
                }
                for (int s = 0; s < T; s++) {
                    a[s] = s <= t ? exp(a[s] - m) : 0.0;
                    sum += a[s];
                }
                for (int s = 0; s < T; s++)
                    a[s] /= sum;
                for (int i = 0; i < HS; i++) {
                    double o = 0;
                    for (int s = 0; s <= t; s++)
                        o += a[s] * qkv[gqa_at(2, b, s, h / G, i, T, NH, KV, HS)];
                    out[((size_t)b * T + t) * C + (size_t)h * HS + i] = o;
                }
            }
}

void ref_gqa_attention_bwd(double *dqkv, const double *dout, const double *qkv,
                           const double *att, int B, int T, int C, int NH, int KV)
{
    int HS = C / NH, G = NH / KV;
    double scale = 1.0 / sqrt((double)HS);
    memset(dqkv, 0, (size_t)B * T * (NH + 2 * KV) * HS * sizeof *dqkv);
    double *dp = malloc((size_t)T * sizeof *dp);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double *a = att + (((size_t)b * NH + h) * T + t) * T;
                const double *dy = dout + ((size_t)b * T + t) * C + (size_t)h * HS;
                double dot = 0;
                for (int s = 0; s <= t; s++) {
                    dp[s] = 0;
                    for (int i = 0; i < HS; i++) {
                        dp[s] += dy[i] * qkv[gqa_at(2, b, s, h / G, i, T, NH, KV, HS)];
                        dqkv[gqa_at(2, b, s, h / G, i, T, NH, KV, HS)] += a[s] * dy[i];
                    }
                    dot += a[s] * dp[s];
                }
                for (int s = 0; s <= t; s++) {
                    double ds = a[s] * (dp[s] - dot) * scale;
                    for (int i = 0; i < HS; i++) {
                        dqkv[gqa_at(0, b, t, h, i, T, NH, KV, HS)] +=
                            ds * qkv[gqa_at(1, b, s, h / G, i, T, NH, KV, HS)];
                        dqkv[gqa_at(1, b, s, h / G, i, T, NH, KV, HS)] +=
                            ds * qkv[gqa_at(0, b, t, h, i, T, NH, KV, HS)];
                    }
                }
            }
    free(dp);
}
