// llmcost client for Node 20+ (NestJS, Express or plain node:http): no npm packages, only fetch and fs.
//
// Before each LLM call it asks the collector (`llmcost serve`) for a reservation (kill switch, spending
// halt and the user's budget are checked there); after the call it settles with the provider's usage.
// When the collector cannot be reached, the call goes ahead (fail open, configurable) and its usage is
// appended to a local fallback file in llmcost's fallback-log format: `llmcost ingest <file>` stores it.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');

class LLMCostRefusedError extends Error {
  constructor(status, body) {
    super(body.error || `refused (${status})`);
    this.name = 'LLMCostRefusedError';
    this.status = status; // 403 use_case_disabled / spending_halted, 429 budget_exceeded, 400 bad request
    this.reason = body.reason;
    this.body = body;
  }
}

class LLMCostClient {
  constructor({ baseUrl, serviceKey, fallbackFile = 'llmcost-fallback.jsonl', timeoutMs = 5000, failOpen = true } = {}) {
    this.baseUrl = (baseUrl || process.env.LLMCOST_URL || 'http://127.0.0.1:8787').replace(/\/$/, '');
    this.serviceKey = serviceKey || process.env.LLMCOST_SERVICE_KEY;
    this.fallbackFile = fallbackFile;
    this.timeoutMs = timeoutMs;
    this.failOpen = failOpen;
  }

  async post(route, body, identity) {
    const headers = { 'content-type': 'application/json' };
    if (this.serviceKey) headers.authorization = `Bearer ${this.serviceKey}`;
    if (identity) {
      headers['x-user-id'] = identity.userId;
      headers['x-tenant-id'] = identity.tenantId;
      if (identity.accountType) headers['x-account-type'] = identity.accountType;
    }
    const response = await fetch(this.baseUrl + route, {
      method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(this.timeoutMs),
    });
    const text = await response.text();
    let parsed;
    try { parsed = text ? JSON.parse(text) : {}; } catch { parsed = { error: text.slice(0, 200) }; }
    return { status: response.status, body: parsed };
  }

  // Appends one record as `{"timestamp", "error", "event"}`: one write of one line, so lines never interleave.
  writeFallback(event, error) {
    const line = JSON.stringify({ timestamp: new Date().toISOString(), error: String(error), event }) + '\n';
    fs.mkdirSync(path.dirname(path.resolve(this.fallbackFile)), { recursive: true });
    fs.appendFileSync(this.fallbackFile, line);
  }

  // Throws LLMCostRefusedError when the call must not be made; returns null when the collector is unreachable.
  async reserve(identity, { useCase, provider, model, estimatedTokens, prompt }) {
    let answer;
    try {
      answer = await this.post('/v1/reserve', {
        use_case: useCase, provider, model, estimated_tokens: estimatedTokens, prompt,
      }, identity);
    } catch (error) {
      if (!this.failOpen) throw error;
      return null;
    }
    if (answer.status === 200) return answer.body;
    if (answer.status >= 500 && this.failOpen) return null;
    throw new LLMCostRefusedError(answer.status, answer.body);
  }

  // Settles a reservation with the provider's response (its `usage` is read by the collector).
  async settle(reservation, event, response, failure) {
    const body = { reservation_id: reservation.reservation_id, response, status: failure ? 'error' : 'ok',
                   error: failure ? String(failure) : undefined };
    try {
      const answer = await this.post('/v1/settle', body);
      if (answer.status === 200) return answer.body;
      throw new Error(`settle answered ${answer.status}: ${answer.body.error}`);
    } catch (error) {
      this.writeFallback({ ...event, attempt_id: reservation.reservation_id }, `collector settle failed: ${error.message}`);
      return null;
    }
  }

  // Runs `call` (the LLM request) between a reservation and its settlement; returns call's result.
  async track(identity, options, call) {
    const started = new Date();
    const reservation = await this.reserve(identity, options);
    let response;
    let failure;
    try {
      response = await call();
      return response;
    } catch (error) {
      failure = error;
      throw error;
    } finally {
      const usage = (response && response.usage) || {};
      const event = {
        event_id: crypto.randomUUID(), ts: started.toISOString(), user_id: identity.userId,
        tenant_id: identity.tenantId, account_type: identity.accountType, use_case: options.useCase,
        provider: options.provider, model: options.model || (response && response.model), // as the tracker does
        input_tokens: usage.prompt_tokens ?? usage.input_tokens ?? 0,
        output_tokens: usage.completion_tokens ?? usage.output_tokens ?? 0,
        status: failure ? 'error' : 'ok', error: failure ? String(failure) : undefined,
        source: 'node-client',
      };
      if (reservation) {
        await this.settle(reservation, event, response, failure);
      } else {
        this.writeFallback(event, 'collector unreachable at reserve: call made without a reservation');
      }
    }
  }
}

module.exports = { LLMCostClient, LLMCostRefusedError };
