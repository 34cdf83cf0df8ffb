using System.Globalization;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace BlockRepl;

/// <summary><c>blockrepl status</c>: asks a running daemon over its admin endpoint.</summary>
internal static class StatusCommand
{
    public static async Task<int> RunAsync(AdminAddress admin, bool json, CancellationToken cancellationToken)
    {
        using var client = admin.CreateClient(TimeSpan.FromSeconds(5));
        StatusReport? report;
        string raw;
        try
        {
            raw = await client.GetStringAsync(new Uri("v1/status", UriKind.Relative), cancellationToken).ConfigureAwait(false);
            report = JsonSerializer.Deserialize(raw, StatusJsonContext.Default.StatusReport);
        }
        catch (HttpRequestException ex) when (ex.InnerException is SocketException || ex.HttpRequestError == HttpRequestError.ConnectionError)
        {
            throw new UserError($"no daemon answers on {admin}: {ex.InnerException?.Message ?? ex.Message}");
        }
        catch (TaskCanceledException)
        {
            throw new UserError($"the daemon on {admin} did not answer within 5 s");
        }

        if (report is null)
        {
            throw new UserError($"the daemon on {admin} sent an empty status");
        }

        if (json)
        {
            Console.Out.WriteLine(raw);
            return 0;
        }

        Console.Out.Write(Format(report));
        return 0;
    }

    internal static string Format(StatusReport report)
    {
        var ci = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine(ci, $"blockrepl {report.Version}, pid {report.Pid}, up since {report.StartedAt:u}");
        foreach (var v in report.Volumes)
        {
            sb.AppendLine();
            sb.AppendLine(ci, $"volume {v.Name}  {ByteSize.Format(v.SizeBytes)}  uuid {v.VolumeUuid}");
            sb.AppendLine(ci, $"  role {v.Role}  disk {v.Disk}  connection {v.Connection}");
            sb.AppendLine(ci, $"  image {v.Image}");
            var c = v.Counters;
            sb.AppendLine(ci, $"  reads {c.Reads} ({ByteSize.Format(c.BytesRead)})  writes {c.Writes} ({ByteSize.Format(c.BytesWritten)})  flushes {c.Flushes}  trims {c.Trims}  zeroes {c.Zeroes}  errors {c.Errors}");
            sb.AppendLine(ci, $"  clients {v.Clients.Count}");
            foreach (var client in v.Clients)
            {
                sb.AppendLine(ci, $"    {client.FrontEnd} {client.Remote} since {client.Since:u}");
            }
        }

        return sb.ToString();
    }
}
