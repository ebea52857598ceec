# Medians for benchmark drivers. Input: lines "GROUP VALUE". Output, per group in order of first appearance:
# "GROUP MEDIAN MIN MAX COUNT". Usage: awk -f scripts/bench/summarize.awk FILE
{
  if (!($1 in count)) order[++groups] = $1
  values[$1, ++count[$1]] = $2
}
END {
  for (g = 1; g <= groups; g++) {
    name = order[g]; n = count[name]
    for (i = 1; i <= n; i++) x[i] = values[name, i]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
    median = n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
    printf "%s %.6g %.6g %.6g %d\n", name, median, x[1], x[n], n
  }
}
