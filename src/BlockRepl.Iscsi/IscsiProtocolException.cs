using System.Diagnostics.CodeAnalysis;

namespace BlockRepl.Iscsi;

/// <summary>The initiator broke the protocol in a way that ends the connection (error recovery level 0).</summary>
public sealed class IscsiProtocolException : Exception
{
    public IscsiProtocolException(string message) : base(message) { }

    public IscsiProtocolException() { }

    public IscsiProtocolException(string message, Exception inner) : base(message, inner) { }

    [DoesNotReturn]
    public static void Throw(string message) => throw new IscsiProtocolException(message);
}
