namespace BlockRepl;

/// <summary>Bad input or configuration: the CLI prints the message as one line and exits 1, with no stack trace.</summary>
internal sealed class UserError : Exception
{
    public UserError(string message) : base(message) { }

    public UserError() { }

    public UserError(string message, Exception inner) : base(message, inner) { }
}
