// Stands in for the lab's lib/database.ts, the one module lib/mlops-tracking.ts imports
// (`await import('@/lib/database')`): its createAIMetrics inserts a row into the lab's ai_metrics
// table (Neon); here the rows stay in memory, so the driver can show what the lab stored.
export const rows = [];

export async function createAIMetrics(metrics) {
  const row = { id: String(rows.length + 1), ...metrics, created_at: new Date().toISOString() };
  rows.push(row);
  return row;
}
