using System.Diagnostics.CodeAnalysis;

namespace BlockRepl.Nbd;

/// <summary>The client broke the protocol in a way that ends the connection (bad magic, oversized frame...).</summary>
public sealed class NbdProtocolException : Exception
{
    public NbdProtocolException(string message) : base(message) { }

    public NbdProtocolException() { }

    public NbdProtocolException(string message, Exception inner) : base(message, inner) { }

    [DoesNotReturn]
    internal static void Throw(string message) => throw new NbdProtocolException(message);
}
