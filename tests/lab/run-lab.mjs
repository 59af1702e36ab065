// Runs the lab's own lib/mlops-tracking.ts against a sidecar, the way the lab's chat route calls it.
//
//   MLOPS_SERVICE_URL=http://127.0.0.1:5001 node run-lab.mjs OUT_DIR
//
// lib/mlops-tracking.ts is the lab's file as it is (seeds/000); TypeScript strips its types into
// OUT_DIR, and its one import, '@/lib/database' (Next.js's path alias), resolves to lib/database.mjs.
// Prints one JSON object: the payloads sent, what the lab's functions logged, and the rows it stored.
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { register } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import ts from "typescript";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out || !process.env.MLOPS_SERVICE_URL) {
  throw new Error("usage: MLOPS_SERVICE_URL=http://host:port node run-lab.mjs OUT_DIR");
}

const source = await readFile(path.join(here, "lib", "mlops-tracking.ts"), "utf8");
const { outputText, diagnostics } = ts.transpileModule(source, {
  compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
  fileName: "mlops-tracking.ts",
  reportDiagnostics: true,
});
if (diagnostics.length > 0) {
  throw new Error(ts.formatDiagnostics(diagnostics, ts.createCompilerHost({})));
}
await mkdir(out, { recursive: true });
const compiled = path.join(out, "mlops-tracking.mjs");
await writeFile(compiled, outputText);

const stub = pathToFileURL(path.join(here, "lib", "database.mjs")).href;
register(
  "data:text/javascript," +
    encodeURIComponent(
      `export async function resolve(specifier, context, next) {
        return specifier === "@/lib/database"
          ? { url: ${JSON.stringify(stub)}, shortCircuit: true }
          : next(specifier, context);
      }`,
    ),
);

// What the lab's functions print: trackMetrics only logs (it never throws), so the driver listens.
const logged = [];
for (const level of ["log", "error"]) {
  console[level] = (...args) => logged.push({ level, text: args.map(String).join(" ") });
}

const lab = await import(pathToFileURL(compiled).href);
const { rows } = await import(stub);

const businessContext =
  "You are the AI receptionist of Bright Smile Dental. Opening hours: Mon-Fri 9-17. " +
  "Services: check-ups, cleaning, whitening. Book appointments when asked.";

// The chat route's success payload (app/api/chat/route.ts, after the AI response).
function chatMetrics({ businessId, conversationId, sessionId, userMessage, parsedResponse, responseTimeMs }) {
  const tokenMetrics = lab.calculateTokenUsage(businessContext, userMessage, parsedResponse.message);
  const apiCost = lab.estimateApiCost(tokenMetrics.totalTokens);
  return {
    business_id: businessId,
    conversation_id: conversationId,
    session_id: sessionId,
    response_time_ms: responseTimeMs,
    success_rate: 1.0,
    tokens_used: tokenMetrics.totalTokens,
    api_cost_usd: apiCost,
    model_name: "gemini-1.5-flash",
    intent_detected: parsedResponse.intent,
    appointment_requested: parsedResponse.type === "appointment_booking",
    human_handoff_requested: parsedResponse.type === "human_handoff",
    user_message_length: userMessage.length,
    ai_response_length: parsedResponse.message.length,
    response_type: parsedResponse.type,
  };
}

const businessId = "bright-smile";
const success = chatMetrics({
  businessId,
  conversationId: "conv-1",
  sessionId: "session-1",
  userMessage: "What are your opening hours?",
  parsedResponse: { message: "We are open Monday to Friday, 9 am to 5 pm.", intent: "general", type: "text" },
  responseTimeMs: 1234,
});
// The chat route's catch block.
const failure = {
  business_id: businessId || "unknown",
  session_id: "session-2",
  response_time_ms: 87,
  success_rate: 0.0,
  tokens_used: 0,
  api_cost_usd: 0,
  intent_detected: "error",
  appointment_requested: false,
  human_handoff_requested: true,
  user_message_length: 0,
  ai_response_length: 0,
  response_type: "error",
};
// A booking: the route's payload for an appointment_booking answer, with the MetricsData fields the
// route leaves out (a booked appointment, the user's satisfaction, token split) and a time measured
// with performance.now(), in fractional milliseconds.
const userMessage = "Can I book a cleaning on Tuesday at 10?";
const booking = {
  ...chatMetrics({
    businessId,
    conversationId: "conv-3",
    sessionId: "session-3",
    userMessage,
    parsedResponse: {
      message: "Done: your cleaning is booked for Tuesday at 10:00.",
      intent: "booking",
      type: "appointment_booking",
    },
    responseTimeMs: 900.5,
  }),
  appointment_booked: true,
  user_satisfaction: 5,
  prompt_tokens: 40,
  completion_tokens: 13,
};

const payloads = [success, failure, booking];
for (const metrics of payloads) {
  await lab.trackMetrics(metrics);
}
process.stdout.write(JSON.stringify({ payloads, logged, stored: rows }) + "\n");
