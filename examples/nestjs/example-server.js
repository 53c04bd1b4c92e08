// A tiny app on node:http wired like a NestJS/Express service: identity middleware, then a tracked LLM call.
// The LLM call is a stand-in returning an OpenAI-shaped response; put your provider's SDK call there.
//   LLMCOST_URL=http://127.0.0.1:8787 PORT=3000 node example-server.js
'use strict';

const http = require('node:http');
const { LLMCostClient, LLMCostRefusedError } = require('./llmcost-client');
const { requireIdentity } = require('./identity-middleware');

const client = new LLMCostClient({ fallbackFile: process.env.LLMCOST_FALLBACK_FILE || 'llmcost-fallback.jsonl' });
const identity = requireIdentity();

async function callModel(prompt) {
  const words = prompt.split(/\s+/).filter(Boolean).length;
  return { id: 'chatcmpl-example', model: 'gpt-4o-2024-08-06', choices: [{ message: { content: 'ok' } }],
           usage: { prompt_tokens: 100 + words, completion_tokens: 40, total_tokens: 140 + words } };
}

function send(res, status, body) {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(body));
}

const server = http.createServer((req, res) => {
  identity(req, res, async () => {
    let text = '';
    for await (const chunk of req) text += chunk;
    let input;
    try { input = text ? JSON.parse(text) : {}; } catch { return send(res, 400, { error: 'body is not JSON' }); }
    try {
      const response = await client.track(req.llmcostIdentity, {
        useCase: input.use_case || 'auto_populate', provider: 'openai', model: 'gpt-4o',
        estimatedTokens: input.estimated_tokens, prompt: input.prompt || '',
      }, () => callModel(input.prompt || ''));
      send(res, 200, { answer: response.choices[0].message.content, usage: response.usage });
    } catch (error) {
      if (error instanceof LLMCostRefusedError) return send(res, error.status, { error: error.message, reason: error.reason });
      send(res, 502, { error: 'the LLM call failed' });
    }
  });
});

server.listen(Number(process.env.PORT || 3000), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
