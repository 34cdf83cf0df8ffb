using System.Globalization;
using System.Text.RegularExpressions;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>Runs tools/ackcheck.py (the acknowledged-write checker) and parses what it prints.</summary>
internal static partial class AckCheck
{
    public static string Script => Path.Combine(RepoLayout.Root, "tools", "ackcheck.py");

    public static async Task EnsureLibnbdAsync() =>
        (await NbdPython.RunAsync("import nbd")).EnsureSuccess();

    public static async Task<VerifyResult> VerifyAsync(string nbdUri, string state, string mode)
    {
        var run = await Tool.RunAsync(Script, ["verify", "--uri", nbdUri, "--state", state, "--mode", mode], Tool.DefaultTimeout);
        var lines = run.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(lines.Length == 1, $"verify should print exactly one stdout line.\n{run}");
        var m = ResultLine().Match(lines[0]);
        Assert.True(m.Success, $"malformed verify result line '{lines[0]}'.\n{run}");
        var info = StateLine().Match(run.Stderr);
        Assert.True(info.Success, $"verify printed no state summary.\n{run}");
        return new VerifyResult(run.ExitCode, Int(m, "checked"), Int(m, "lost"), Int(m, "corrupt"),
            Int(info, "runs"), Int(info, "sent"), run.Stderr);
    }

    public static WriterSummary ParseWriterSummary(IEnumerable<string> stdoutLines, string output)
    {
        foreach (var line in stdoutLines)
        {
            var m = SummaryLine().Match(line.Trim());
            if (m.Success)
            {
                return new WriterSummary(Int(m, "sent"), Int(m, "acked"), Int(m, "durable"), Int(m, "flushes"), m.Groups["ended"].Value);
            }
        }

        Assert.Fail($"the writer printed no summary line.\n{output}");
        return null!;
    }

    private static long Int(Match m, string group) => long.Parse(m.Groups[group].Value, CultureInfo.InvariantCulture);

    [GeneratedRegex(@"^ackcheck: (?<checked>\d+) blocks checked, (?<lost>\d+) lost writes, (?<corrupt>\d+) corrupt$")]
    private static partial Regex ResultLine();

    [GeneratedRegex(@"ackcheck: state: (?<runs>\d+) runs, (?<sent>\d+) writes sent,")]
    private static partial Regex StateLine();

    [GeneratedRegex(@"^ackcheck: run [0-9a-f]{16}: (?<sent>\d+) writes sent, (?<acked>\d+) acknowledged, (?<durable>\d+) durable, (?<flushes>\d+) flushes, ended: (?<ended>.*)$")]
    private static partial Regex SummaryLine();

    public sealed record WriterSummary(long Sent, long Acked, long Durable, long Flushes, string Ended);

    public sealed record VerifyResult(int ExitCode, long Checked, long Lost, long Corrupt, long Runs, long TotalSent, string Stderr)
    {
        public override string ToString() =>
            $"exit {ExitCode}, {Checked} checked, {Lost} lost, {Corrupt} corrupt, {Runs} runs, {TotalSent} sent\nstderr:\n{Stderr}";
    }
}
