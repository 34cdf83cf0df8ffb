using System.Net;
using System.Net.Sockets;

namespace BlockRepl.Nbd;

/// <summary>Where the NBD server listens: <c>HOST:PORT</c> (TCP) or <c>unix:PATH</c>.</summary>
public sealed record NbdEndpoint(EndPoint EndPoint)
{
    public bool IsUnix => EndPoint is UnixDomainSocketEndPoint;

    public static NbdEndpoint Parse(string text)
    {
        if (text.StartsWith("unix:", StringComparison.Ordinal))
        {
            var path = text["unix:".Length..];
            if (path.Length == 0)
            {
                throw new FormatException("unix: needs a socket path, e.g. unix:/run/blockrepl/nbd.sock");
            }

            return new NbdEndpoint(new UnixDomainSocketEndPoint(Path.GetFullPath(path)));
        }

        if (IPEndPoint.TryParse(text, out var ip) && text.Contains(':', StringComparison.Ordinal))
        {
            return new NbdEndpoint(ip);
        }

        throw new FormatException($"'{text}' is not an endpoint: use HOST:PORT (e.g. 127.0.0.1:10809) or unix:PATH");
    }

    public override string ToString() => EndPoint switch
    {
        UnixDomainSocketEndPoint u => "unix:" + u,
        _ => EndPoint.ToString()!,
    };
}
